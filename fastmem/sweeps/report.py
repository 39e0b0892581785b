"""``fastmem report``: one self-contained HTML page of a sweep's folder (figures inline as PNG,
no script from anywhere, no server): what ran, what failed or diverged, and the metrics
against the grid's axes, chosen from the grid (``choose_layout``).

matplotlib draws the figures (the house plotting library, PNG inline: a page that opens from
disk and can be mailed); Jinja2 fills the template ``report.html`` (autoescaped)."""

import base64
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _validate as v
from . import experiment as registry
from . import grid as g
from . import store

# each experiment's metrics, the first the default figure (others: its numeric result columns)
METRICS = {"scaling-law": ("error", "loss"), "scan-snap": ("loss", "entropy", "common_mass"),
           "pathcond-depth": ("epochs", "accuracy"), "ihead": ("loss",)}
MAX_LINES, MAX_PANELS, MAX_FIGURES = 8, 16, 8
DIVERGED = ("exclude", "published")


@dataclass
class Layout:
    """Which axes of a grid a report draws how: ``x`` the horizontal axis (log where ``log_x``),
    one line per combination of ``lines``, a panel per combination of ``panels`` (rows, then
    columns), a figure per combination of ``slices``; ``seed`` is averaged over."""

    x: str
    lines: list = field(default_factory=list)
    panels: list = field(default_factory=list)
    slices: list = field(default_factory=list)
    log_x: bool = False


def _numeric(values):
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)


def choose_layout(axes, x=None, by=None):
    """The Layout of a grid's ``axes`` ({key: its values}): ``x`` the numeric axis with the most
    values (3 or more; else the axis with the most values), lines the small categorical axes
    (``by``: those named), panels the next one or two axes, figures for the rest. Axes with one
    value are not drawn; ``seed`` is what the mean and its standard error are over."""
    varying = {k: vals for k, vals in axes.items() if len(vals) > 1 and k != "seed"}
    for name, given in (("x", [x] if x else []), ("by", by or [])):
        for k in given:
            if k not in axes:
                v.fail(f"--{name}" if name == "by" else "--x", f"axes of the grid {sorted(axes)}", repr(k))
    if x is None:
        numeric = [k for k, vals in varying.items() if _numeric(vals) and len(vals) >= 3]
        pool = numeric or list(varying)
        x = max(pool, key=lambda k: len(varying[k])) if pool else next(iter(axes))
    rest = [k for k in varying if k != x]
    if by is None:
        by, n = [], 1
        for k in sorted((k for k in rest if not _numeric(varying[k])), key=lambda k: len(varying[k])):
            if len(by) < 2 and n * len(varying[k]) <= MAX_LINES:
                by.append(k)
                n *= len(varying[k])
    by = [k for k in by if k != x]
    rest = sorted((k for k in rest if k not in by), key=lambda k: len(varying[k]))
    panels, n = [], 1
    for k in rest:
        if len(panels) < 2 and n * len(varying[k]) <= MAX_PANELS:
            panels.append(k)
            n *= len(varying[k])
    slices = [k for k in rest if k not in panels]
    vals = axes[x]
    log_x = _numeric(vals) and min(vals) > 0 and max(vals) / min(vals) >= 10
    return Layout(x, list(by), panels, slices, bool(log_x))


@dataclass
class Sweep:
    """A sweep folder read for a report: its runs (one row each), trajectories (long format or
    None), experiment, grids, the runs its grids hold, sessions and what the store skipped."""

    out: Path
    runs: object
    trajectories: object
    experiment: str
    grids: list
    expected: int
    sessions: list
    skipped: list

    @property
    def axes(self):
        ax = {}
        for gr in self.grids:
            for k, vals in gr.items():
                for x in (vals if isinstance(vals, list) else [vals]):
                    if x not in ax.setdefault(k, []):
                        ax[k].append(x)
        return {k: sorted(vals, key=lambda x: (str(type(x)), x)) for k, vals in ax.items()}

    def counts(self):
        status = self.runs["status"].value_counts() if len(self.runs) else {}
        on_disk = len(self.runs)
        return {"expected": self.expected, "on_disk": on_disk, "ok": int(status.get("ok", 0)),
                "diverged": int(status.get("diverged", 0)), "failed": int(status.get("failed", 0)),
                "missing": max(self.expected - on_disk, 0)}


def read(out):
    """The Sweep of folder ``out``, or a named error: not a sweep, no runs, an experiment
    fastmem does not know."""
    out = Path(out)
    name = store.experiment_of(out)
    if name is None:
        v.fail("out", "a sweep's folder (with the sweep.json fastmem sweep writes)",
               f"{str(out)!r}, which {'holds no sweep.json' if out.exists() else 'does not exist'}")
    if name not in registry.names():
        v.fail("out", f"a sweep of a registered experiment {registry.names()}", f"{str(out)!r}, of {name!r}")
    exp = registry.get(name)
    with warnings.catch_warnings(record=True) as caught:  # a damaged chunk is said in the page, the rest drawn
        warnings.simplefilter("always", store.SweepStoreWarning)
        from .runner import columns

        runs, parts = store.load(out, columns(exp), trajectories=True)
    skipped = [str(w.message) for w in caught if issubclass(w.category, store.SweepStoreWarning)]
    if not len(runs):
        v.fail("out", "a sweep with runs on disk", f"{str(out)!r}, with none yet")
    grids = store.grids_of(out)
    ids = {g.run_id(c, exp.float_keys) for gr in grids for c in g.expand(g.axes(gr, exp))}
    traj = None
    if parts:
        import pandas as pd

        traj = pd.concat(parts, ignore_index=True)
    return Sweep(out, runs, traj, name, grids, len(ids), store.sessions_of(out), skipped)


def _metrics(sweep, y):
    """The metrics drawn: ``y`` (checked against the numeric result columns), else the default."""
    exp = registry.get(sweep.experiment)
    from pandas.api.types import is_numeric_dtype

    numeric = [c for c in exp.columns if c in sweep.runs and c not in ("status", "message", "seconds")
               and is_numeric_dtype(sweep.runs[c])]
    if y is None:  # one metric by default: a page to take in at a glance (--y draws more)
        return [m for m in METRICS.get(sweep.experiment, ()) if m in numeric][:1] or numeric[:1]
    for m in y:
        if m not in numeric:
            v.fail("--y", f"metrics of this sweep {numeric}", repr(m))
    return list(y)


def published_error(c):
    """The error the published code records for a diverged run of the scaling-law grid: the
    argmax of NaN scores is class 0, so tokens whose target is 0 count as right (y = x mod M,
    Zipf(alpha) over N tokens)."""
    p = np.arange(1, c["N"] + 1, dtype=np.float64) ** -float(c["alpha"])
    p /= p.sum()
    return float(1.0 - p[np.arange(c["N"]) % c["M"] == 0].sum())


def cell_stats(sweep, metric, diverged="exclude"):
    """Per cell (every axis but seed): the metric's mean over its finished runs and its standard
    error, the runs, the diverged and failed ones. ``diverged``: "exclude" (a diverged run is
    counted and marked, not averaged) or "published" (it enters the mean with the error the
    authors' code records, the scaling-law grid's error only)."""
    import pandas as pd

    keys = [k for k in sweep.axes if k != "seed" and k in sweep.runs]
    df = sweep.runs.copy()
    value = df[metric].astype(float)
    use = df["status"] == "ok"
    if diverged == "published":
        if sweep.experiment != "scaling-law" or metric != "error":
            v.fail("--diverged", "'exclude' here ('published' is the scaling-law grid's error only)", repr(diverged))
        div = df["status"] == "diverged"
        if div.any():
            value = value.where(~div, pd.Series([published_error(r) for r in df.to_dict("records")], index=df.index))
        use = use | div
    df["_v"], df["_diverged"], df["_failed"] = value.where(use), df["status"] == "diverged", df["status"] == "failed"
    if not keys:
        df["_all"], keys = 0, ["_all"]
    grouped = df.groupby(keys, dropna=False, sort=True)
    stats = grouped.agg(mean=("_v", "mean"), std=("_v", "std"), n=("_v", "count"), runs=("_v", "size"),
                        diverged=("_diverged", "sum"), failed=("_failed", "sum")).reset_index()
    stats["se"] = (stats["std"] / np.sqrt(stats["n"])).where(stats["n"] > 1, np.where(stats["n"] == 1, 0.0, np.nan))
    return stats.drop(columns=["std"] + (["_all"] if "_all" in stats else []))


def _combos(axes, names):
    import itertools

    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[k] for k in names))]


def _label(combo):
    return ", ".join(f"{k}={val}" for k, val in combo.items()) or "all runs"


def _select(df, combo):
    for k, val in combo.items():
        df = df[df[k] == val]
    return df


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display: the figures go into the page)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig):
    plt = _pyplot()

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(stats_by_sweep, layout, axes, metric, slice_combo):
    """One figure: a panel per combination of the panel axes, a line per combination of the line
    axes (solid: the sweep, dashed: the compared one), mean +- standard error against x, diverged
    cells marked x at the panel's top with their count."""
    plt = _pyplot()

    rows = _combos(axes, layout.panels[:1]) if layout.panels else [{}]
    cols = _combos(axes, layout.panels[1:2]) if len(layout.panels) > 1 else [{}]
    lines = _combos(axes, layout.lines)
    # fixed margins, not a layout engine: a layout measured every panel's text (half of the time
    # of the published grid's page)
    width, height = 3.4 * len(cols) + 2.6, 2.5 * len(rows) + 0.7
    fig, grid = plt.subplots(len(rows), len(cols), figsize=(width, height), squeeze=False, sharex=True)
    fig.subplots_adjust(left=0.75 / width, right=1 - 2.5 / width, bottom=0.5 / height, top=1 - 0.55 / height,
                        wspace=0.3, hspace=0.45)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs = axes[layout.x]
    numeric = _numeric(xs)
    for i, rc in enumerate(rows):
        for j, cc in enumerate(cols):
            ax = grid[i, j]
            for li, lc in enumerate(lines):
                for si, (name, stats) in enumerate(stats_by_sweep):
                    part = _select(stats, {**slice_combo, **rc, **cc, **lc}).sort_values(layout.x)
                    if not len(part):
                        continue
                    pos = part[layout.x].to_numpy() if numeric else [xs.index(val) for val in part[layout.x]]
                    color = colors[li % len(colors)]
                    label = (_label(lc) if layout.lines else metric) + (f" ({name})" if len(stats_by_sweep) > 1 else "")
                    ax.plot(pos, part["mean"], marker="o", ms=3, color=color, ls="-" if si == 0 else "--",
                            label=label)
                    ax.fill_between(pos, part["mean"] - part["se"], part["mean"] + part["se"], color=color, alpha=0.2)
                    bad = part[part["diverged"] > 0]
                    for px, k in zip(np.asarray(pos)[part["diverged"].to_numpy() > 0], bad["diverged"]):
                        ax.plot([px], [1.0], marker="x", color=color, ms=7, transform=ax.get_xaxis_transform(),
                                clip_on=False)
                        ax.annotate(str(int(k)), (px, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                                    color=color, xytext=(3, -9), textcoords="offset points")
            if layout.log_x:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            elif len(xs) <= 8:  # the grid's values, not round numbers between them
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.minorticks_off()
            ax.set_title(_label({**rc, **cc}) if layout.panels else "", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel(layout.x)
            if j == 0:
                ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    handles, labels = grid[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1 - 2.4 / width, 1 - 0.55 / height), fontsize=7,
                   frameon=False)
    fig.suptitle(_label(slice_combo) if slice_combo else metric, fontsize=10)
    return _png(fig)


def _trajectory_figures(sweep, layout, axes):
    """Loss and error (the recorded metrics) against step, mean over seeds: a panel per line of
    the main figures, a line per value of x, in the first figure's slice and panel."""
    plt = _pyplot()

    t = sweep.trajectories
    keys = [k for k in axes if k != "seed" and k in sweep.runs]
    t = t.merge(sweep.runs[["run_id"] + keys], on="run_id")
    fixed = {k: axes[k][0] for k in layout.slices + layout.panels}
    t = _select(t, fixed)
    out = []
    for metric in [c for c in t.columns if c not in ("run_id", "point", "step") + tuple(keys)]:
        panels = _combos(axes, layout.lines) or [{}]
        fig, grid = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False, layout="constrained")
        for ax, pc in zip(grid[0], panels):
            for xv in axes[layout.x]:
                part = _select(t, {**pc, layout.x: xv})
                if not len(part):
                    continue
                mean = part.groupby("step")[metric].mean()
                ax.plot(mean.index, mean.to_numpy(), label=f"{layout.x}={xv}")
            ax.set(xscale="log", xlabel="step", ylabel=metric, title=_label(pc) if pc else "")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(f"{metric} against step ({_label(fixed)})", fontsize=9)
        out.append({"title": f"{metric} against step", "png": _png(fig)})
    return out


def _differing(stats, other, keys):
    """Cells whose means differ by more than the sum of their standard errors."""
    m = stats.merge(other, on=keys, suffixes=("", "_2"))
    m = m[(m["n"] > 0) & (m["n_2"] > 0)]
    diff = (m["mean"] - m["mean_2"]).abs()
    d = m[diff > m["se"] + m["se_2"]]
    return [{"cell": _label({k: r[k] for k in keys}), "mean": r["mean"], "se": r["se"], "mean_2": r["mean_2"],
             "se_2": r["se_2"]} for r in d.to_dict("records")]


def _failed_groups(runs, keys):
    failed = runs[runs["status"] == "failed"]
    groups = []
    for msg, part in failed.groupby("message", sort=False):
        groups.append({"message": str(msg)[-500:], "count": len(part),
                       "example": _label({k: part.iloc[0][k] for k in keys})})
    return sorted(groups, key=lambda x: -x["count"])


def _header(sweep):
    c = sweep.counts()
    sessions = sweep.sessions
    starts = [s["started"] for s in sessions if s.get("started")]
    ends = [s["finished"] for s in sessions if s.get("finished")]
    wall = sum(s["finished"] - s["started"] for s in sessions if s.get("finished") and s.get("started"))
    running = any(s.get("finished") is None for s in sessions)
    reps = sweep.runs["representation"].value_counts().to_dict() if "representation" in sweep.runs else {}
    return {**c, "experiment": sweep.experiment, "out": str(sweep.out),
            "grids": [json.dumps(gr) for gr in sweep.grids],
            "cpu_seconds": float(sweep.runs["seconds"].sum()) if "seconds" in sweep.runs else math.nan,
            "wall_seconds": wall if ends else None,
            "first_started": time.strftime("%Y-%m-%d %H:%M", time.localtime(min(starts))) if starts else None,
            "backends": sorted({f"{s.get('backend')} ({s.get('backend_taken')})" for s in sessions}),
            "versions": sorted({f"fastmem {s.get('fastmem')}, CPU level {s.get('cpu_level')}" for s in sessions}),
            "representations": reps,
            "partial": c["missing"] > 0 or running,
            "running": running}


def report(out, html=None, y=None, x=None, by=None, compare=None, diverged="exclude"):
    """Write the HTML report of sweep folder ``out`` (default ``out/report.html``); returns its
    path. y: metrics to draw (default the experiment's); x, by: the horizontal axis and the axes
    drawn as lines (default: chosen from the grid, see choose_layout); compare: a second sweep
    folder of the same experiment, drawn dashed, with the cells that differ beyond their
    standard errors listed; diverged: "exclude" or "published" (see cell_stats)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    if diverged not in DIVERGED:
        v.fail("diverged", f"one of {DIVERGED}", repr(diverged))
    sweep = read(out)
    other = read(compare) if compare is not None else None
    if other is not None and other.experiment != sweep.experiment:
        v.fail("--compare", f"a sweep of {sweep.experiment!r}, as OUT", f"one of {other.experiment!r}")
    axes = sweep.axes
    if other is not None:
        for k, vals in other.axes.items():
            axes[k] = sorted(set(axes.get(k, [])) | set(vals), key=lambda x: (str(type(x)), x))
    layout = choose_layout(axes, x, by)
    metrics = _metrics(sweep, y)
    keys = [k for k in axes if k != "seed" and k in sweep.runs and len(axes[k]) > 1]  # what tells cells apart
    figures, differing = [], {}
    slices = _combos(axes, layout.slices)
    first = None
    for metric in metrics:
        stats = [("OUT", cell_stats(sweep, metric, diverged))]
        first = stats[0][1] if first is None else first
        if other is not None:
            stats.append(("OUT2", cell_stats(other, metric, diverged)))
            differing[metric] = _differing(stats[0][1], stats[1][1], keys)
        for sc in slices[:MAX_FIGURES]:  # the rest said on the page, with the flags that choose
            figures.append({"title": f"{metric}" + (f": {_label(sc)}" if sc else ""),
                            "png": _figure(stats, layout, axes, metric, sc)})
    div_cells = [{"cell": _label({k: r[k] for k in keys}), "diverged": r["diverged"], "runs": r["runs"]}
                 for r in first[first["diverged"] > 0].to_dict("records")]
    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html"]))
    page = env.get_template("report.html").render(
        h=_header(sweep), other=_header(other) if other is not None else None, layout=layout, metrics=metrics,
        figures=figures, more_figures=max(len(slices) - MAX_FIGURES, 0), diverged_policy=diverged,
        failed=_failed_groups(sweep.runs, keys), diverged_cells=div_cells, differing=differing,
        trajectories=_trajectory_figures(sweep, layout, axes) if sweep.trajectories is not None else [],
        skipped=sweep.skipped + (other.skipped if other is not None else []),
        made=time.strftime("%Y-%m-%d %H:%M"))
    path = Path(html) if html is not None else Path(out) / "report.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
