"""What the experiments share: output files, the margin-plane parametrisation, landscapes."""

import json
from pathlib import Path

import numpy as np

import fastmem as fm


def figure(nrows=1, ncols=1, width=4.0, height=3.3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), layout="constrained",
                             squeeze=False)
    return fig, axes


def save(fig, out, name):
    """Write the figure as PNG and PDF; returns the file names."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", dpi=120)
        files.append(f"{name}.{ext}")
    plt.close(fig)
    return files


def write_json(out, name, data):
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=_jsonable))
    return path


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(type(o).__name__)


def plane_W(gamma0, gamma1):
    """W of margin coordinates (docs/experiments.md): W[:, 0] = gamma / 2, W[:, 1] = -gamma / 2 (d = 2, M = 2).
    GD keeps W in this plane, as every gradient E^T G has opposite columns."""
    return np.array([[gamma0 / 2, -gamma0 / 2], [gamma1 / 2, -gamma1 / 2]], dtype=np.float64)


def plane_coords(W):
    """(gamma0, gamma1) of a W in the plane, or of a stack of them (..., 2, 2)."""
    W = np.asarray(W)
    return 2 * W[..., 0, 0], 2 * W[..., 1, 0]


def landscape(E, U, task, extent, n=81, sharpness=False):
    """Loss, 0-1 error (and top Hessian eigenvalue) of fastmem over the (gamma0, gamma1) square."""
    g = np.linspace(-extent, extent, n)
    loss, err = np.empty((n, n)), np.empty((n, n))
    sharp = np.empty((n, n)) if sharpness else None
    for i, g1 in enumerate(g):
        for j, g0 in enumerate(g):
            mem = fm.AssociativeMemory(E, U, W=plane_W(g0, g1))
            ev = fm.population_metrics(mem, task)
            loss[i, j], err[i, j] = ev["loss"], 1.0 - ev["accuracy"]
            if sharpness:
                sharp[i, j] = fm.sharpness(mem, task, iters=200)
    return g, loss, err, sharp


def first_step_at(values, cond):
    """The first index where cond(values) holds, or None."""
    idx = np.flatnonzero(cond(np.asarray(values)))
    return int(idx[0]) if idx.size else None


def spikes(loss):
    """Steps t at which the loss rose: loss[t] > loss[t - 1]."""
    loss = np.asarray(loss)
    return [int(t) for t in np.flatnonzero(np.diff(loss) > 0) + 1]
