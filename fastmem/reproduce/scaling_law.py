"""``fastmem reproduce scaling-law [--from OUT]``: the figures of *Scaling laws for associative
memories* (Cabannes, Dohmatob, Bietti, ICLR 2024) from its published grid's sweep folder
(examples/scaling_law_grid.toml, 40,320 runs; run first when no folder is given).

The paper's figures fix the batch size and learning rate; those are not in this repository's
sources, so this command takes batch 16 (the grid's smallest, the most steps) and ntrain
102,400 (the most data), and for each model, optimizer and LayerNorm setting the lr of the
grid's four with the lowest mean error at d = 1,000, said in the JSON."""

from pathlib import Path

import numpy as np

from ..memory.experiments import PUBLISHED_GRID
from ._common import figure, save

MODELS, OPTIMIZERS, LAYERNORM = ("matrix", "learnable", "exponential"), ("sgd", "adam"), (False, True)


def _mean(df, **where):
    for k, val in where.items():
        df = df[df[k] == val]
    ok = df[df["status"] == "ok"]["error"]
    return float(ok.mean()) if len(ok) else np.nan, int((df["status"] == "diverged").sum()), len(df)


def scaling_law_experiment(out, source=None, grid=None):
    """The scaling-law paper's figures from its published grid: error against d per model and
    optimizer, with and without LayerNorm; error against ntrain; SGD's lr sensitivity against
    Adam(0, 0)'s. Runs the 40,320-run grid first when no sweep folder is given: some 7 minutes
    on 2 cores, resumable."""
    import fastmem as fm

    grid = PUBLISHED_GRID if grid is None else grid  # (another grid of the same keys: the tests' small one)
    folder = Path(source) if source is not None else Path(out) / "scaling-law-sweep"
    if source is None:
        fm.sweep(grid, folder, extend=True)
    runs = fm.load_sweep(folder)
    expected = fm.sweeps.count(grid)
    ds, lrs, ntrains = sorted(grid["d"]), sorted(grid["lr"]), sorted(grid["ntrain"])
    mid = ds[len(ds) // 2]  # the error against ntrain at a middle d (the published grid's: 100)
    batch, most = min(grid["batch_size"]), max(ntrains)  # the most steps, the most data
    base = runs[(runs["batch_size"] == batch)]
    best_lr, curves = {}, {}
    for m in MODELS:
        for o in OPTIMIZERS:
            for ln in LAYERNORM:
                at = base[(base["model"] == m) & (base["optimizer"] == o) & (base["layernorm"] == ln)]
                errs = {lr: _mean(at, ntrain=most, d=max(ds), lr=lr)[0] for lr in lrs}
                finite = {lr: e for lr, e in errs.items() if np.isfinite(e)}
                lr = min(finite, key=finite.get) if finite else lrs[0]
                best_lr[f"{m}/{o}/ln={ln}"] = lr
                curves[m, o, ln] = {"d": [_mean(at, ntrain=most, d=d, lr=lr) for d in ds],
                                    "ntrain": [_mean(at, ntrain=n, d=mid, lr=lr) for n in ntrains],
                                    "lr": [_mean(at, ntrain=most, d=max(ds), lr=x) for x in lrs]}
    fig, axes = figure(3, len(MODELS), width=4.2, height=3.2)
    styles = {("sgd", False): ("C0", "-"), ("sgd", True): ("C0", "--"), ("adam", False): ("C1", "-"),
              ("adam", True): ("C1", "--")}
    for j, m in enumerate(MODELS):
        for (o, ln), (color, ls) in styles.items():
            c = curves[m, o, ln]
            label = f"{'Adam(0, 0)' if o == 'adam' else 'SGD'}{', LayerNorm' if ln else ''} (lr {best_lr[f'{m}/{o}/ln={ln}']:g})"
            axes[0, j].plot(ds, [e for e, _, _ in c["d"]], marker="o", color=color, ls=ls, label=label)
            axes[1, j].plot(ntrains, [e for e, _, _ in c["ntrain"]], marker="o", color=color, ls=ls, label=label)
            axes[2, j].plot(lrs, [e for e, _, _ in c["lr"]], marker="o", color=color, ls=ls, label=label)
            for k, (e, div, n) in enumerate(c["lr"]):
                if div:
                    axes[2, j].plot([lrs[k]], [1.0], marker="x", color=color, transform=axes[2, j].get_xaxis_transform(),
                                    clip_on=False)
        axes[0, j].set(xscale="log", yscale="log", xlabel="d", ylabel="error", title=f"{m}: error against d")
        axes[1, j].set(xscale="log", yscale="log", xlabel="ntrain", ylabel="error", title=f"{m}: against ntrain (d = {mid})")
        axes[2, j].set(xscale="log", yscale="log", xlabel="lr", ylabel="error",
                       title=f"{m}: against lr (d = {max(ds)}; x: diverged runs)")
        for i in range(3):
            axes[i, j].grid(alpha=0.3)
        axes[0, j].legend(fontsize=6)
    files = save(fig, out, "scaling-law")
    # the paper's qualitative claims
    # falls: lower at the largest d than at the smallest, or already 0 at both (every token right)
    falls = {f"{m}/{o}/ln={ln}": bool(c["d"][-1][0] < c["d"][0][0] or c["d"][-1][0] == c["d"][0][0] == 0.0)
             for (m, o, ln), c in curves.items() if all(div == 0 for _, div, _ in c["d"]) and np.isfinite(c["d"][-1][0])}
    at_large_d = {f"{o}/ln={ln}": float(np.nanmean([curves[m, o, ln]["d"][-1][0] for m in MODELS]))
                  for o in OPTIMIZERS for ln in LAYERNORM}
    lowest = min(at_large_d, key=lambda k: at_large_d[k] if np.isfinite(at_large_d[k]) else np.inf)
    # where the optimizers part: the largest batch (the fewest steps), the least data, best lr each
    big = runs[(runs["batch_size"] == max(grid["batch_size"])) & (runs["ntrain"] == min(ntrains)) & (runs["d"] == max(ds))]
    at_big_batch = {f"{m}/{o}/ln={ln}": min((_mean(big, model=m, optimizer=o, layernorm=ln, lr=x)[0] for x in lrs),
                                            key=lambda e: e if np.isfinite(e) else np.inf)
                    for m in MODELS for o in OPTIMIZERS for ln in LAYERNORM}
    sgd_lr = dict(zip(lrs, curves["learnable", "sgd", False]["lr"]))
    diverged_share = sgd_lr[max(lrs)][1] / max(sgd_lr[max(lrs)][2], 1)
    checks = {f"error falls with d at every setting that converges (batch {batch}, ntrain {most:,})": all(falls.values()),
              f"Adam(0, 0) with LayerNorm reaches the lowest error at d = {max(ds)} (mean over the models)":
                  lowest == "adam/ln=True",
              f"SGD at lr {max(lrs):g} diverges in the learnable model (most of its runs)": diverged_share > 0.5}
    checks_names = list(checks)
    return {"files": files, "sweep": str(folder), "runs_on_disk": len(runs), "runs_in_grid": expected,
            "batch_size": batch, "ntrain": most, "best_lr_at_large_d": best_lr,
            "error_against_d": {f"{m}/{o}/ln={ln}": [e for e, _, _ in c["d"]] for (m, o, ln), c in curves.items()},
            "error_falls_with_d": falls, "mean_error_at_large_d": at_large_d,
            f"error_at_batch_{max(grid['batch_size'])}_ntrain_{min(ntrains)}_d_{max(ds)}_best_lr": at_big_batch,
            "learnable_sgd_diverged_share_at_largest_lr": diverged_share,
            "expected": "error falls with d wherever the run converges; Adam(0, 0) with LayerNorm lowest at large d; "
                        "SGD at a large lr diverges in the learnable model",
            "checks": checks, "holds": all(checks.values()),
            "known_misses": {checks_names[1]: "at batch 16 with each setting's best lr every optimizer ends at error 0 "
                                              "at d = 1,000 with 102,400 tokens (within a few percent of each other "
                                              "with 1,024); Adam(0, 0) leads where steps are few, at batch 1,024 "
                                              "(this JSON's error_at_batch_1024_...; docs/experiments.md)"}}
