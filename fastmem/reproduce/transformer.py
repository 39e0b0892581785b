"""The small-transformer study of the associative-memory paper (pal's exp_ihead_figures.ipynb,
cells 3 and 4): W_O^2 trained alone at d = 64 for lr 20, 50, 100, 200 on common batches, at the
paper's size (B = 512, T = 256, k = 5 fixed triggers, 51 iterations), the phenomena of
docs/transformer.md as checks."""

import numpy as np

from ._common import figure, save

LRS = (20.0, 50.0, 100.0, 200.0)
TOKENS = [53, 60, 0, 45, 5]  # the notebook's np.random.seed(42); np.random.permutation(65)[:5]


def sign_changes(m):
    """(tokens,) the sign changes of each column of m (R, tokens) over its rows."""
    s = np.sign(m)
    return (s[1:] != s[:-1]).sum(0)


def wo2_experiment(out, d=64, steps=51, batch_size=512, seq_len=256, seed=0):
    """W_O^2 alone (cells 3 and 4): loss for lr 20, 50, 100, 200 and the margins of five tokens at lr 100 and 200."""
    from .. import transformer as tr

    task = tr.InductionHeads(k=5, seq_len=seq_len)
    model = tr.TwoLayer(d=d, seq_len=seq_len, seed=seed)
    rec = tr.Record(steps="all", probes=("wo2",))
    runs = dict(zip(LRS, tr.train_lrs(model, task, list(LRS), steps, batch_size=batch_size, seed=seed, record=rec)))
    held = task.sample(batch_size, seed=seed + 1)  # a batch no run trained on
    other0 = model.loss(held, "other")
    other = {lr: r.model.loss(held, "other") - other0 for lr, r in runs.items()}
    L = {lr: r.loss for lr, r in runs.items()}
    L0 = L[LRS[0]][0]
    recall = {lr: float(r.recall["wo2"][-1]) for lr, r in runs.items()}
    # the margins' oscillation: lr 200's trajectory is chaotic, so its count on one seed moves with
    # float32 rounding; the check is on the mean over three seeds (model and data)
    flips_by_seed = {seed: [float(sign_changes(r.margins["wo2"][1:]).mean()) for r in runs.values()]}
    for s in (seed + 1, seed + 2):
        more = tr.train_lrs(tr.TwoLayer(d=d, seq_len=seq_len, seed=s), task, list(LRS), steps, batch_size=batch_size,
                             seed=s, record=tr.Record(steps="all", probes=("wo2",)))
        flips_by_seed[s] = [float(sign_changes(r.margins["wo2"][1:]).mean()) for r in more]
    flips = dict(zip(LRS, np.mean(list(flips_by_seed.values()), axis=0).tolist()))
    last10 = {lr: float(L[lr][-10:].mean()) for lr in LRS}
    faster = float((L[50.0][2:] < L[20.0][2:]).mean())  # the fraction of t >= 2 where lr 50 is below lr 20

    fig, axes = figure(1, 3, width=4.2)
    for lr in LRS:
        axes[0, 0].plot(L[lr], label=f"lr = {lr:g}")
    axes[0, 0].axhline(np.log(task.V), color="k", lw=0.6, ls=":")
    axes[0, 0].set(ylim=(2.4, 5), xlabel="iteration t", ylabel="loss", title=f"Training W_O^2 only, d = {d}")
    axes[0, 0].legend(fontsize=7)
    for ax, lr in zip(axes[0, 1:], (100.0, 200.0)):
        for tok in TOKENS:
            ax.plot(runs[lr].margins["wo2"][:, tok], label=repr(task.bigrams.chars[tok]))
        ax.set(yticks=[0, 5], xlabel="iteration t", ylabel="m_t(x)", title=f"W_O^2 margins, lr = {lr:g}")
        ax.grid(axis="y")
        ax.legend(fontsize=7)
    files = save(fig, out, "ihead_wo2")

    checks = {
        "L_0 is the same for every lr and above ln V": bool(
            np.allclose([L[lr][0] for lr in LRS], L0, rtol=1e-6) and L0 > np.log(task.V)),
        "faster with a larger stable lr: L_t(50) < L_t(20) at 90% of t >= 2 or more": faster >= 0.9,
        "W_O^2 recall at t = 50 rises over lr 20 < 50 < 100": recall[20.0] < recall[50.0] < recall[100.0],
        "no loss above L_0 at lr <= 50": bool(all((L[lr][1:] <= L0).all() for lr in (20.0, 50.0))),
        "benign spikes: lr 100 exceeds L_0, yet ends at or below lr 50": bool(
            L[100.0].max() > L0 and last10[100.0] <= last10[50.0] + 0.05),
        "too large: lr 200 spikes far above L_0 and has not settled": bool(
            L[200.0].max() > L0 + 1 and last10[200.0] > last10[50.0]),
        "margins oscillate more at larger lr (sign changes per token, mean of 3 seeds)": bool(
            all(flips[a] < flips[b] for a, b in zip(LRS, LRS[1:]))),
        "the loss at non-trigger positions rises (not trained on)": bool(all(other[lr] > 0 for lr in LRS)),
    }
    return {"files": files, "d": d, "steps": steps, "batch_size": batch_size, "seq_len": seq_len,
            "loss": {f"{lr:g}": L[lr] for lr in LRS}, "recall_t50": {f"{lr:g}": recall[lr] for lr in LRS},
            "sign_changes_per_token": {f"{lr:g}": flips[lr] for lr in LRS},
            "sign_changes_per_token_by_seed": {str(k): dict(zip((f"{lr:g}" for lr in LRS), v))
                                               for k, v in flips_by_seed.items()},
            "lr50_below_lr20": faster, "last10_loss": {f"{lr:g}": last10[lr] for lr in LRS},
            "other_loss_change": {f"{lr:g}": other[lr] for lr in LRS},
            "expected": "L_0 common and above ln 65; larger stable lr converges faster; benign spikes at lr 100; "
                        "lr 200 too large; margin oscillations grow with lr; the bigram positions are forgotten",
            "checks": checks, "holds": all(checks.values())}


ALL_LRS = (2.0, 5.0, 10.0, 20.0)
ALL_DS = (64, 128)
# the reduced size that runs on 2 cores in a few minutes, and the paper's (--full: B = 512,
# T = 256; the authors' run length is not recoverable, docs/transformer.md)
REDUCED = dict(batch_size=64, seq_len=64, steps=1000)
FULL = dict(batch_size=512, seq_len=256, steps=500)


def all_experiment(out, full=False, seed=0, size=None):
    """Train all (cells 5-7): d 64 and 128 at lr 2, 5, 10, 20 (W_K^1, W_K^2, W_O^2), loss and the W_O^2 and W_K^2 margins.

    size : {batch_size, seq_len, steps} to override (REDUCED, or FULL with ``full``)."""
    from .. import transformer as tr

    size = {**(FULL if full else REDUCED), **(size or {})}
    B, T, steps = size["batch_size"], size["seq_len"], size["steps"]
    every = max(1, steps // 100)
    task = tr.InductionHeads(k=5, seq_len=T)
    rec = tr.Record(steps=every, probes=tr.PROBES)
    tail = slice(-max(1, steps // 10), None)
    runs, alone = {}, {}
    for d in ALL_DS:
        model = tr.TwoLayer(d=d, seq_len=T, seed=seed)
        for lr in ALL_LRS:
            runs[d, lr] = tr.train(model, task, lr, steps, batch_size=B, train="all", seed=seed, record=rec)
        # W_O^2 alone on the same batches, at the lrs of cells 3-4: what the head loss is compared with
        wo2 = tr.train_lrs(model, task, [20.0, 50.0, 100.0], steps, batch_size=B, seed=seed,
                           record=tr.Record(steps=[0], probes=()))
        alone[d] = min(float(r.loss[tail].mean()) for r in wo2 if r.status == "ok")
    L = {k: r.loss for k, r in runs.items()}
    final = {k: float(v[tail].mean()) for k, v in L.items()}
    mean = {k: float(v.mean()) for k, v in L.items()}  # the area under the curve: lower is faster
    best = {d: min(ALL_LRS, key=lambda lr: final[d, lr]) for d in ALL_DS}
    recall = {p: {k: r.recall[p] for k, r in runs.items()} for p in ("wk2", "wk1")}

    fig, axes = figure(1, 4, width=4.0)
    for ax, d in zip(axes[0, :2], ALL_DS):
        for lr in ALL_LRS:
            ax.plot(L[d, lr], lw=0.8, label=f"lr = {lr:g}")
        ax.axhline(alone[d], color="k", lw=0.6, ls=":", label="W_O^2 alone")
        ax.set(xlabel="iteration t", ylabel="loss", title=f"Train all, d = {d}")
        ax.legend(fontsize=7)
    shown = runs[128, 20.0]
    for tok in TOKENS:
        axes[0, 2].plot(shown.steps, shown.margins["wo2"][:, tok], label=repr(task.bigrams.chars[tok]))
    for j, tok in enumerate(task.trigger_tokens):
        axes[0, 3].plot(shown.steps, shown.margins["wk2"][:, j], label=repr(task.bigrams.chars[tok]))
    for ax, what in zip(axes[0, 2:], ("W_O^2", "W_K^2")):
        ax.set(xlabel="iteration t", ylabel="m_t(x)", title=f"{what} margins, d = 128, lr = 20")
        ax.axhline(0, color="k", lw=0.6)
        ax.legend(fontsize=7)
    files = save(fig, out, "ihead_all")

    at = lambda p, d: recall[p][d, best[d]]  # noqa: E731
    checks = {
        "L_0 is the same for every lr at each d": all(
            np.allclose([L[d, lr][0] for lr in ALL_LRS], L[d, ALL_LRS[0]][0], rtol=1e-6) for d in ALL_DS),
        "the head loss falls below what W_O^2 alone reaches (best lr, each d)": all(
            final[d, best[d]] < alone[d] for d in ALL_DS),
        "an induction head forms: W_K^2 recall rises from its start to 0.8 or more (best lr, each d)": all(
            at("wk2", d)[-1] >= 0.8 > at("wk2", d)[0] for d in ALL_DS),
        "W_K^1's previous-token recall rises from chance to most positions (best lr, each d)": all(
            at("wk1", d)[-1] > 0.5 and at("wk1", d)[-1] - at("wk1", d)[0] >= 0.4 for d in ALL_DS),
        "lr 20 is faster than lr 2 (a lower mean loss over the run, each d)": all(
            mean[d, 20.0] < mean[d, 2.0] for d in ALL_DS),
    }
    key = lambda d, lr: f"d{d}_lr{lr:g}"  # noqa: E731
    return {"files": files, "full": full, **size, "ds": ALL_DS, "lrs": ALL_LRS,
            "loss": {key(*k): v for k, v in L.items()}, "record_steps": shown.steps,
            "final_loss": {key(*k): v for k, v in final.items()}, "mean_loss": {key(*k): v for k, v in mean.items()},
            "wo2_alone_final_loss": {f"d{d}": alone[d] for d in ALL_DS}, "best_lr": {f"d{d}": best[d] for d in ALL_DS},
            "recall": {p: {key(*k): v for k, v in r.items()} for p, r in recall.items()},
            "status": {key(*k): r.status for k, r in runs.items()},
            "expected": "the head loss falls below W_O^2 alone's; the induction head (W_K^2) and the previous-token "
                        "head (W_K^1) form; lr 20 faster than lr 2 (docs/transformer.md)",
            "checks": checks, "holds": all(checks.values()),
            "known_misses": {"lr 20 is faster than lr 2 (a lower mean loss over the run, each d)":
                             "not seen at the reduced size nor at the paper's over 200 steps, with gradients equal to "
                             "an independent PyTorch model's (docs/transformer.md)"}}
