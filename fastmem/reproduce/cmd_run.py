"""CMD of a fastmem training run."""

import numpy as np

import fastmem as fm

from ._common import figure, save


def cmd_experiment(out):
    """Correlation Mode Decomposition of the memory W along an SGD run with LayerNorm (d = 24)."""
    N, M, d, T = 100, 5, 24, 400
    E, U = fm.embeddings.gaussian(N, M, d, seed=0, dtype=np.float64)
    W0 = np.random.default_rng(1).standard_normal((d, d)) / np.sqrt(d)
    mem, task = fm.AssociativeMemory(E, U, W=W0, layernorm=True), fm.Task.zipf(N, M, 2.0)
    run = fm.train(mem, task, fm.SGD(lr=1.0), T, batch_size=16, seed=0,
                   record=fm.Record(steps="all", metrics=("loss", "W")))
    X = run.W_history.reshape(len(run.steps), -1)
    modes = (1, 2, 5, 10)
    fits = {m: fm.cmd.fit(X, n_modes=m, n_samples=d * d, seed=0) for m in modes}
    errors = {m: f.relative_error(X) for m, f in fits.items()}
    res = fits[5]
    fig, axes = figure(1, 3, width=3.8)
    r = res.ref_series
    axes[0, 0].plot(run.steps, (r - r.mean(axis=0)) / r.std(axis=0), lw=0.8)
    axes[0, 0].set(xlabel="step", ylabel="reference parameters (standardised)", title="5 modes")
    rec = res.reconstruct()
    for i in np.random.default_rng(0).choice(X.shape[1], 4, replace=False):
        line, = axes[0, 1].plot(run.steps, X[:, i], lw=1)
        axes[0, 1].plot(run.steps, rec[:, i], ":", color=line.get_color(), lw=1.5)
    axes[0, 1].set(xlabel="step", ylabel="W entries: true (solid), CMD (dotted)")
    axes[0, 2].plot(modes, [errors[m] for m in modes], "o-")
    axes[0, 2].set(xlabel="modes", ylabel="relative reconstruction error", xscale="log")
    return {"files": save(fig, out, "cmd"), "relative_error_by_modes": {str(m): e for m, e in errors.items()},
            "mode_sizes_5": np.bincount(res.assignment, minlength=5),
            "expected": "a few modes reconstruct the trajectory; the error does not grow with the number of modes",
            "holds": all(errors[b] <= errors[a] + 1e-9 for a, b in zip(modes, modes[1:]))}
