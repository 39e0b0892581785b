"""The under-parameterised memory: d = M = 2, U = I, y(x) = x mod 2, E Gaussian on the circle."""

import numpy as np

import fastmem as fm

from ._common import figure, landscape, plane_W, plane_coords, save, spikes


def _setup(N, alpha, seed):
    E, _ = fm.embeddings.sphere(N, 2, 2, seed=seed, dtype=np.float64)
    return E, np.eye(2), fm.Task.zipf(N, 2, alpha)


def forgetting_experiment(out):
    """Cross-entropy's minimiser gives up some tokens when N >> d (the excess 0-1 error)."""
    draws = range(4)
    fig, axes = figure(4, 4, width=3.0, height=2.7)
    excess = {}
    for c, N in enumerate((3, 30)):
        excess[N] = []
        for r, seed in enumerate(draws):
            E, U, task = _setup(N, 1.0, seed)
            g, loss, err, _ = landscape(E, U, task, 10.0, n=61)
            # The minimiser of the population loss, by long full-batch GD (convex in W).
            run = fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=2.0), 20000,
                           record=fm.Record("last", metrics=("loss", "accuracy", "W")))
            ce_error = 1.0 - float(run.accuracy[-1])
            excess[N].append(ce_error - float(err.min()))
            g0, g1 = plane_coords(run.W)
            a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
            a.contourf(g, g, np.log(loss), levels=20, cmap="viridis")
            b.contourf(g, g, err, levels=12, cmap="Greys")
            for ax in (a, b):
                ax.plot([np.clip(g0, -10, 10)], [np.clip(g1, -10, 10)], "r*")
            a.set_title(f"N={N} draw {seed}: log loss", fontsize=8)
            b.set_title(f"0-1 error; CE excess {excess[N][-1]:.3f}", fontsize=8)
    files = save(fig, out, "forgetting")

    # SGD from margins (7.5, 2.5): N = 10, Zipf 2, batch 10, lr 0.1, 1000 steps.
    E, U, task = _setup(10, 2.0, 0)
    mem = fm.AssociativeMemory(E, U, W=plane_W(7.5, 2.5))
    run = fm.train(mem, task, fm.SGD(lr=0.1), 1000, batch_size=10, seed=0,
                   record=fm.Record(steps="all", metrics=("loss", "accuracy", "W")))
    g, loss, _, _ = landscape(E, U, task, 10.0, n=61)
    fig, axes = figure(1, 3, width=3.6)
    axes[0, 0].contourf(g, g, np.log(loss), levels=20, cmap="viridis")
    axes[0, 0].plot(*plane_coords(run.W_history), "r-", lw=0.8)
    axes[0, 0].set(xlabel="gamma0", ylabel="gamma1", title="SGD trajectory")
    axes[0, 1].semilogy(run.steps, run.loss)
    axes[0, 1].set(xlabel="t", ylabel="loss")
    axes[0, 2].plot(run.steps, 1 - run.accuracy)
    axes[0, 2].set(xlabel="t", ylabel="0-1 error")
    files += save(fig, out, "forgetting-sgd")
    return {
        "files": files,
        "excess_error_N3": excess[3], "excess_error_N30": excess[30],
        "sgd_final_loss": float(run.loss[-1]), "sgd_final_error": float(1 - run.accuracy[-1]),
        "expected": "for N = 30 the cross-entropy minimiser has a positive excess 0-1 error",
        "holds": max(excess[30]) > 0,
    }


def sharpness_experiment(out):
    """Top Hessian eigenvalue along GD (lr 10 and 1, 35 steps) and over the plane."""
    fig, axes = figure(2, 3, width=3.6)
    numbers = {}
    for r, (N, start) in enumerate(((3, (-5.0, -5.0)), (30, (-5.0, 5.0)))):
        E, U, task = _setup(N, 1.0, 0)
        g, loss, _, sharp = landscape(E, U, task, 10.0, n=31, sharpness=True)
        cs = axes[r, 0].contourf(g, g, np.log10(sharp), levels=20, cmap="magma")
        fig.colorbar(cs, ax=axes[r, 0], label="log10 lambda_max")
        for lr in (10.0, 1.0):
            run = fm.train(fm.AssociativeMemory(E, U, W=plane_W(*start)), task, fm.SGD(lr=lr), 35,
                           record=fm.Record(steps="all", metrics=("loss", "sharpness", "W")), power_iters=300)
            axes[r, 0].plot(*plane_coords(run.W_history), "o-", ms=2, label=f"lr={lr:g}")
            axes[r, 1].semilogy(run.steps, run.loss, label=f"lr={lr:g}")
            axes[r, 2].plot(run.steps, lr * run.sharpness / 2, label=f"lr={lr:g}")
            numbers[f"N{N}_lr{lr:g}"] = {
                "max_lr_sharpness_over_2": float(np.max(lr * run.sharpness / 2)),
                "loss_start": float(run.loss[0]), "loss_end": float(run.loss[-1]),
                "loss_rises_at": spikes(run.loss),
            }
        axes[r, 0].set(xlabel="gamma0", ylabel="gamma1", title=f"N={N}: sharpness, trajectories")
        axes[r, 1].set(xlabel="t", ylabel="loss")
        axes[r, 2].axhline(1.0, color="k", lw=0.5)
        axes[r, 2].set(xlabel="t", ylabel="lr * lambda_max / 2", yscale="log")
        for a in axes[r]:
            a.legend(fontsize=7)
    big = [numbers[f"N{N}_lr10"] for N in (3, 30)]
    return {"files": save(fig, out, "sharpness"), **numbers,
            "expected": "at lr 10 the run crosses lr * lambda_max / 2 = 1 and still converges",
            "holds": all(b["max_lr_sharpness_over_2"] > 1 and b["loss_end"] < b["loss_start"] for b in big)}
