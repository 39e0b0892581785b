"""The two-token geometry: N = d = M = 2, U = I, y(x) = x, E = [[1, 0], [alpha, sqrt(1 - alpha^2)]]."""

import numpy as np

import fastmem as fm

from ._common import figure, first_step_at, landscape, plane_coords, save, spikes


def _setup(alpha, p1):
    E, U = fm.embeddings.two_token(alpha)
    return E, U, fm.Task(np.array([p1, 1.0 - p1]), np.array([0, 1]))


def landscape_experiment(out):
    """Loss and 0-1 error over the (gamma0, gamma1) plane, near and far, for three cosines alpha."""
    alphas, p1 = (-0.5, 0.5, 0.95), 0.75
    fig, axes = figure(len(alphas), 4, width=3.2, height=2.8)
    numbers = {"p1": p1, "alphas": alphas, "min_loss_far": {}, "min_error_near": {}}
    for r, alpha in enumerate(alphas):
        E, U, task = _setup(alpha, p1)
        for c, extent in enumerate((1.0, 10.0)):
            g, loss, err, _ = landscape(E, U, task, extent, n=61)
            a = axes[r, 2 * c]
            cs = a.contourf(g, g, np.log(loss), levels=20, cmap="viridis")
            fig.colorbar(cs, ax=a)
            a.set_title(f"alpha={alpha}: log loss, |gamma|<={extent:g}", fontsize=8)
            b = axes[r, 2 * c + 1]
            b.contourf(g, g, err, levels=[-0.01, 0.2, 0.3, 0.8, 1.01], cmap="Greys")
            b.set_title(f"alpha={alpha}: 0-1 error", fontsize=8)
            if extent == 10.0:
                numbers["min_loss_far"][str(alpha)] = float(loss.min())
            else:
                numbers["min_error_near"][str(alpha)] = float(err.min())
    for a in axes.ravel():
        a.set(xlabel="gamma0", ylabel="gamma1")
    return {"files": save(fig, out, "landscape"), **numbers}


def _gd(alpha, p1, lr, steps, metrics=("loss", "accuracy", "W")):
    E, U, task = _setup(alpha, p1)
    return fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=lr), steps,
                    record=fm.Record(steps="all", metrics=metrics))


def spike_experiment(out):
    """GD at lr 10 and lr 1 for 35 steps (alpha = 0.95, p1 = 0.75): a loss spike that still wins."""
    alpha, p1, steps = 0.95, 0.75, 35
    runs = {lr: _gd(alpha, p1, lr, steps) for lr in (10.0, 1.0)}
    E, U, task = _setup(alpha, p1)
    g, loss, _, _ = landscape(E, U, task, 10.0, n=61)
    fig, axes = figure(1, 3, width=3.6)
    axes[0, 0].contourf(g, g, np.log(loss), levels=25, cmap="viridis")
    for lr, run in runs.items():
        g0, g1 = plane_coords(run.W_history)
        axes[0, 0].plot(g0, g1, "o-", ms=2, label=f"lr={lr:g}")
        axes[0, 1].semilogy(run.steps, run.loss, label=f"lr={lr:g}")
        axes[0, 2].plot(run.steps, 1 - run.accuracy, label=f"lr={lr:g}")
    axes[0, 0].set(xlabel="gamma0", ylabel="gamma1", title="trajectories on log loss")
    axes[0, 1].set(xlabel="t", ylabel="loss")
    axes[0, 2].set(xlabel="t", ylabel="0-1 error")
    for a in axes[0]:
        a.legend(fontsize=7)
    big, small = runs[10.0], runs[1.0]
    numbers = {
        "loss_rises_at_lr10": spikes(big.loss),
        "final_loss": {"lr10": float(big.loss[-1]), "lr1": float(small.loss[-1])},
        "expected": "lr 10 shows a loss spike yet ends lower than lr 1 at t = 35",
    }
    numbers["holds"] = bool(numbers["loss_rises_at_lr10"]) and big.loss[-1] < small.loss[-1]
    return {"files": save(fig, out, "spike"), **numbers}


def learning_rates_experiment(out):
    """Steps of GD to perfect accuracy over p1 = sigmoid(v), alpha and lr (1,000 runs of 1,000 steps)."""
    vs = np.logspace(-0.5, 0.5, 10)
    p1s = 1 / (1 + np.exp(-vs))
    alphas = np.linspace(0.5, 1.0, 10)
    lrs = np.logspace(-1, 1, 10)
    steps = np.full((len(p1s), len(alphas), len(lrs)), np.nan)
    for i, p1 in enumerate(p1s):
        for j, alpha in enumerate(alphas):
            for k, lr in enumerate(lrs):
                run = _gd(alpha, p1, lr, 1000, metrics=("accuracy",))
                t = first_step_at(run.accuracy, lambda a: a >= 1.0 - 1e-12)
                steps[i, j, k] = np.nan if t is None else run.steps[t]
    # alpha = 1 makes the two embeddings equal: accuracy 1 is out of reach, so the
    # summaries are over alpha < 1; a run that never got there within 1,000 steps counts
    # as 1,001 (censored) in the medians.
    reach = np.nan_to_num(steps[:, alphas < 1, :], nan=1001.0)
    fig, axes = figure(1, 2, width=4.2)
    for j in (0, 4, 8):
        axes[0, 0].loglog(lrs, np.median(reach[:, j, :], axis=0), "o-", label=f"alpha={alphas[j]:.2f}")
    axes[0, 0].set(xlabel="lr", ylabel="steps to accuracy 1 (median over p1)")
    axes[0, 0].legend(fontsize=7)
    im = axes[0, 1].imshow(np.log10(np.median(reach, axis=0)), origin="lower", aspect="auto",
                           extent=[np.log10(lrs[0]), np.log10(lrs[-1]), alphas[0], alphas[alphas < 1][-1]])
    fig.colorbar(im, ax=axes[0, 1], label="log10 steps (median over p1)")
    axes[0, 1].set(xlabel="log10 lr", ylabel="alpha")
    med_lr = np.median(reach, axis=(0, 1))
    med_alpha = np.median(reach, axis=(0, 2))
    numbers = {
        "p1": p1s, "alpha": alphas, "lr": lrs, "steps_to_accuracy_1": steps,
        "median_steps_by_lr": med_lr, "median_steps_by_alpha": med_alpha,
        "never_reached": int(np.isnan(steps).sum()),
        "never_reached_with_alpha_below_1": int(np.isnan(reach).sum()),
        "rank_correlation_lr": _spearman(lrs, med_lr),
        "rank_correlation_alpha": _spearman(alphas[alphas < 1], med_alpha),
        "expected": "larger lr reaches accuracy 1 in fewer steps; steps grow as alpha -> 1 "
                    "(alpha = 1 makes the two tokens identical: never reached)",
    }
    numbers["holds"] = numbers["rank_correlation_lr"] <= -0.9 and numbers["rank_correlation_alpha"] >= 0.9
    return {"files": save(fig, out, "learning-rates"), **numbers}



def _spearman(a, b):
    """Rank correlation of two 1-D sequences (ties get the mean of their ranks)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        r = np.empty(len(v))
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
