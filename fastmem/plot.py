"""Figures of runs (matplotlib, no display needed)."""


def plot_run(run, path, title=None):
    """Save loss and 0-1 error against step (log-scaled) to ``path`` (PNG, PDF, ... by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    steps = run.steps + 1  # so that the initial state (step 0) has a place on the log axis
    if run.loss is not None:
        axes[0].loglog(steps, run.loss)
    axes[0].set(xlabel="step + 1", ylabel="population loss")
    if run.accuracy is not None:
        axes[1].semilogx(steps, 1.0 - run.accuracy)
    axes[1].set(xlabel="step + 1", ylabel="0-1 error (p-weighted)")
    fig.suptitle(title or f"{run.optimizer}: {run.status}", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
