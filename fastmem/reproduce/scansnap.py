"""Scan and Snap's figures (Tian et al., NeurIPS 2023), rerun: Fig. 4 on Syn-Small (the attention
over iterations for two learning-rate ratios, the loss beside the authors' log) and Fig. 6 on
Syn-Medium (a 640-run sweep: the distinct-token entropy against the ratio)."""

from pathlib import Path

import numpy as np

from ._common import figure, save

# The authors' scan_snap/figure_4.log (docs/scansnap.md): loss at iterations 0, 2, 4, 6, 8, 10.
AUTHORS_LOSS = {0: 3.526, 2: 2.368, 4: 0.733, 6: 0.161, 8: 0.044, 10: 0.013}


def small_experiment(out, ratios=(1.0, 10.0), seeds=10, steps=100):
    """Fig. 4 on Syn-Small: attention c_n over iterations (ratios 1 and 10), the loss against the authors' log."""
    from .. import scansnap as ss
    from ..scansnap.experiments import top_distinct

    facts = ss.syn_small()
    runs = {r: ss.train(facts, steps, lr_z=1.0, ratio=r, seed=0) for r in ratios}
    # the authors' log is one run: its curve against the mean of `seeds` runs at ratio 1
    mean = np.mean([ss.train(facts, 11, lr_z=1.0, ratio=1.0, seed=s, record=()).loss for s in range(seeds)], axis=0)
    top = top_distinct(facts)
    support = [np.flatnonzero(facts.context[f] > 0) for f in range(facts.F)]

    fig, axes = figure(len(ratios), facts.F + 1, width=4.2, height=3.2)
    for i, (ratio, run) in enumerate(runs.items()):
        t0 = ss.snap_time(facts.F, facts.M, ratio)
        for f in range(facts.F):
            ax = axes[i, f]
            im = ax.imshow(run.records.attention[:, f, support[f]].T, aspect="auto", origin="lower", cmap="viridis",
                           extent=(-0.5, steps + 0.5, -0.5, len(support[f]) - 0.5), vmin=0)
            ax.axvline(t0, color="w", ls="--", lw=1)
            ax.set_yticks(range(len(support[f])), [str(t) for t in support[f]], fontsize=5)
            ax.set(xlabel="iteration", ylabel="context token",
                   title=f"c_n, n = {facts.target[f]}, lr_y/lr_z = {ratio:g} (snap ~ {t0:.1f})")
            fig.colorbar(im, ax=ax)
        ax = axes[i, -1]
        ax.semilogy(run.loss, label=f"fastmem, seed 0, ratio {ratio:g}")
        if ratio == 1.0:
            ax.semilogy(range(len(mean)), mean, "k-", lw=0.8, label=f"fastmem, mean of {seeds} seeds")
            ax.semilogy(list(AUTHORS_LOSS), list(AUTHORS_LOSS.values()), "ro", label="the authors' log")
        ax.set(xlabel="iteration", ylabel="loss", title="Syn-Small, lr_z = 1")
        ax.legend(fontsize=7)

    per_run, checks = [], {}
    for ratio, run in runs.items():
        rec = run.records
        per_run.append({"ratio": ratio, "loss": run.loss.tolist(),
                        "facts": [{"query": int(facts.query[f]), "next": int(facts.target[f]),
                                   "argmax": int(rec.argmax[-1, f]), "entropy": float(rec.entropy[-1, f]),
                                   "common_mass": float(rec.common_mass[-1, f]),
                                   "common_mass_start": float(rec.common_mass[0, f])} for f in range(facts.F)]})
    r1, r10 = runs[ratios[0]], runs[ratios[-1]]
    checks["initial_loss_is_ln_M"] = bool(abs(r1.loss[0] - np.log(facts.M)) < 1e-6)
    checks["argmax_on_the_top_distinct_token"] = all(bool((r.records.argmax[-1] == top).all()) for r in runs.values())
    checks["common_mass_falls"] = all(bool((r.records.common_mass[-1] < r.records.common_mass[0]).all())
                                      for r in runs.values())
    checks["entropy_higher_at_ratio_10"] = bool(r10.records.entropy[-1].mean() > r1.records.entropy[-1].mean())
    within = {str(t): float(mean[t] / want - 1) for t, want in AUTHORS_LOSS.items() if t > 0}
    checks["loss_within_10pct_of_the_log"] = all(abs(x) < 0.10 for x in within.values())
    return {"files": save(fig, out, "scan-snap-small"), "runs": per_run, "top_distinct_token": top.tolist(),
            "authors_loss": {str(k): val for k, val in AUTHORS_LOSS.items()},
            "mean_loss_10_seeds": mean.tolist(), "relative_to_the_log": within, "checks": checks,
            "expected": "each fact attends most to its distinct token of highest P(l|n) (19 and 29); the "
                        "attention mass on common tokens falls; the distinct-token entropy is higher at ratio 10 "
                        "than at ratio 1; the loss follows the authors' log within 10% at iterations 2..10",
            "holds": all(checks.values())}


def medium_experiment(out, num_last=(1, 3, 5, 10), lr_z=(0.5, 1.0, 2.0, 3.0), ratio=(1.0, 2.0, 5.0, 10.0),
                      seeds=tuple(range(1, 11)), workers=None):
    """Fig. 6 on Syn-Medium: 640 runs through the sweep runner, distinct-token entropy against lr_y/lr_z."""
    import fastmem as fm

    grid = {"num_last": list(num_last), "lr_z": list(lr_z), "ratio": list(ratio), "seed": list(seeds)}
    folder = Path(out) / "scan-snap-medium-sweep"  # beside the figures: a rerun resumes it
    df = fm.sweep(grid, folder, experiment="scan-snap", workers=workers, quiet=True, extend=True)
    if (df["status"] != "ok").any():
        bad = df[df["status"] != "ok"]
        raise RuntimeError(f"scan-snap-medium: {len(bad)} runs did not finish ({folder}): "
                           f"{bad['status'].iloc[0]} {bad['message'].iloc[0][-300:]}")
    cells = df.groupby(["num_last", "lr_z", "ratio"])["entropy"].agg(["mean", "std", "count"]).reset_index()
    fig, axes = figure(1, len(num_last), width=3.6, height=3.2)
    records, higher_at_10, falls_with_lr_z = [], {}, {}
    for i, nl in enumerate(num_last):
        ax = axes[0, i]
        panel = cells[cells["num_last"] == nl]
        for lz in lr_z:
            c = panel[panel["lr_z"] == lz].sort_values("ratio")
            ax.errorbar(c["ratio"], c["mean"], yerr=c["std"], marker="o", capsize=3, label=f"lr_z = {lz:g}")
            first, last = c["mean"].iloc[0], c["mean"].iloc[-1]
            higher_at_10[f"num_last={nl}, lr_z={lz:g}"] = {"holds": bool(last > first),
                                                            "difference": float(last - first)}
        at1 = panel[panel["ratio"] == min(ratio)].sort_values("lr_z")["mean"].to_numpy()
        falls_with_lr_z[str(nl)] = bool((np.diff(at1) < 0).all())
        ax.set(xscale="log", xlabel="lr_y / lr_z", ylabel="entropy of c_n over distinct tokens",
               title=f"#last/next = {nl}/{2 * nl}")
        ax.set_xticks(list(ratio), [f"{r:g}" for r in ratio])
        ax.legend(fontsize=7)
    for _, r in cells.iterrows():
        records.append({"num_last": int(r["num_last"]), "lr_z": float(r["lr_z"]), "ratio": float(r["ratio"]),
                        "entropy_mean": float(r["mean"]), "entropy_std": float(r["std"]), "n_seeds": int(r["count"])})
    return {"files": save(fig, out, "scan-snap-medium"), "cells": records, "runs": len(df),
            "run_seconds_total": float(df["seconds"].sum()),
            "entropy_higher_at_the_largest_ratio": higher_at_10, "entropy_falls_as_lr_z_grows": falls_with_lr_z,
            "note": "Syn-Medium (num_next_per_last 2, 10 common tokens), PyTorch's default init, SGD momentum 0.9, "
                    "batch 128, L = 128, 100 iterations, float32; each point the mean over the seeds, error bars "
                    "their standard deviation",
            "expected": f"the distinct-token entropy is higher at ratio {max(ratio):g} than at ratio {min(ratio):g} "
                        f"in every panel and for every lr_z (a larger lr_y snaps earlier: denser attention), and at "
                        f"ratio {min(ratio):g} it falls as lr_z grows (both rates larger: sparser)",
            # Theorem 4's t_0 = 2 K ln M / lr_y at lr_y = 1 (divide by lr_y): runs whose t_0 is past the last
            # iteration have not snapped yet
            "snap_time_at_lr_y_1": {str(nl): float(fm.scansnap.snap_time(2 * nl, fm.scansnap.syn_medium(nl).M, 1.0))
                                    for nl in num_last},
            "checks": {**{f"entropy higher at ratio {max(ratio):g} than {min(ratio):g} ({k})": x["holds"]
                          for k, x in higher_at_10.items()},
                       **{f"entropy falls as lr_z grows at ratio {min(ratio):g} (num_last={k})": x
                          for k, x in falls_with_lr_z.items()}},
            "holds": all(x["holds"] for x in higher_at_10.values()) and all(falls_with_lr_z.values()),
            # the runs at ratio 1 of the largest panel have not snapped within the 100 iterations
            "known_misses": {f"entropy higher at ratio {max(ratio):g} than {min(ratio):g} (num_last={max(num_last)}, "
                             f"lr_z={lz:g})": "the ratio-1 runs of this panel have not snapped by the last iteration "
                                              "(Theorem 4's t_0 is past it; docs/scansnap.md)"
                             for lz in lr_z if lz >= 1}}
