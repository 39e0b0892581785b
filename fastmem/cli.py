"""The fastmem command line: run one training run, reproduce the paper's experiments, sweep a
grid of runs (resumably, to Parquet), report on a sweep (one HTML page), info on the build."""

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError

EMBEDDINGS = ("gaussian", "sphere", "orthogonal")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default where it has one (not None, not a flag's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _run_parser(sub):
    p = sub.add_parser("run", help="train one memory and print a summary", formatter_class=_Help)
    p.add_argument("--N", type=int, default=100, help="input tokens")
    p.add_argument("--M", type=int, default=5, help="output tokens (y(x) = x mod M)")
    p.add_argument("--d", type=int, default=100, help="embedding dimension")
    p.add_argument("--alpha", type=float, default=2.0, help="Zipf exponent of p")
    p.add_argument("--embeddings", choices=EMBEDDINGS, default="gaussian", help="E and U")
    p.add_argument("--optimizer", choices=("sgd", "gd", "adam", "sign"), default="sgd", help="the update")
    p.add_argument("--lr", type=float, default=1.0, help="learning rate")
    p.add_argument("--momentum", type=float, default=None, help="sgd and gd only (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="W <- (1 - lr wd) W - lr update")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="adam only (default 0.9 0.999)")
    p.add_argument("--batch-size", type=int, default=0, help="0: full-batch GD on the population loss")
    p.add_argument("--steps", type=int, default=1000, help="updates")
    p.add_argument("--seed", type=int, default=0, help="embeddings and sampling")
    p.add_argument("--layernorm", action="store_true", help="normalise the read-out before the scores")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of the run")
    p.add_argument("--record", default="log", help="'log', 'all', 'last' or every K steps")
    p.add_argument("--backend", default=None, help="auto, cpp, numba or numpy (fm.backends() lists them)")
    p.add_argument("--out", type=Path, help="write the recorded metrics (.csv or .json)")
    p.add_argument("--plot", type=Path, help="save loss and error curves (.png, .pdf, .svg)")


def _writable(name, path, formats):
    """Check before the run that ``path`` has one of ``formats`` and can be written (its folder
    made), so that a run's results are never lost to a bad --out or --plot after the work."""
    if path is None:
        return
    if path.suffix.lower() not in formats:
        raise InvalidArgumentError(f"{name}: expected a file ending in one of {formats}, got {str(path)!r}")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise InvalidArgumentError(f"{name}: expected a file that can be written, got {str(path)!r} "
                                   f"({exc.strerror or exc})") from None
    if not existed:
        path.unlink()


def _writable_folder(name, path):
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{name}: expected a folder (or a path to create), got {str(path)!r}, a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidArgumentError(f"{name}: expected a folder this process can write to, got {str(path)!r} "
                                   f"({exc.strerror or exc})") from None


def _write_whole(name, path, write):
    """write(tmp) to a temporary file beside ``path``, then moved into place: a full disk leaves
    the old file (or none), never a truncated one, and is reported by name."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells the format
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidArgumentError(f"{name}: could not write {str(path)!r} ({exc.strerror or exc})") from None


def _write_metrics(path, run):
    """The run's records to ``path`` (.json, else CSV), written whole."""
    rows = [{"step": int(s), "loss": float(l), "accuracy": float(c)} for s, l, c in zip(run.steps, run.loss,
                                                                                           run.accuracy)]

    def write(tmp):
        if path.suffix.lower() == ".json":
            tmp.write_text(json.dumps({"status": run.status, "steps_done": run.steps_done, "records": rows}, indent=1))
        else:
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["step", "loss", "accuracy"])
                w.writeheader()
                w.writerows(rows)
    _write_whole("--out", path, write)


def _cmd_run(a):
    import fastmem as fm
    from fastmem import _validate as v
    from fastmem.memory import optim

    v.positive_int("--seed", a.seed, allow_zero=True, below=2**64)
    if a.momentum is not None and a.optimizer not in ("sgd", "gd"):
        v.fail("--momentum", f"no momentum with --optimizer {a.optimizer} (sgd and gd only)", a.momentum)
    if a.betas is not None and a.optimizer != "adam":
        v.fail("--betas", f"no betas with --optimizer {a.optimizer} (adam only)", a.betas)
    _writable("--out", a.out, (".csv", ".json"))
    _writable("--plot", a.plot, (".png", ".pdf", ".svg"))
    for name in ("N", "M", "d"):
        v.positive_int(f"--{name}", getattr(a, name))
    # E and U drawn in float64 then cast: what the run holds at its largest, before it is made
    v.fits_in_memory("--N, --M, --d", 2 * 8 * (a.N + a.M) * a.d, "embeddings",
                     f"(N + M) x d = {(a.N + a.M) * a.d:,} entries")
    dtype = np.dtype(a.dtype)
    if a.embeddings == "orthogonal":
        E, U = fm.embeddings.orthogonal(a.N, a.M, a.d, dtype=dtype)
    else:
        E, U = getattr(fm.embeddings, a.embeddings)(a.N, a.M, a.d, seed=a.seed, dtype=dtype)
    kw = {}
    if a.optimizer in ("sgd", "gd"):
        kw["momentum"] = a.momentum or 0.0
    if a.optimizer == "adam":
        kw["betas"] = (0.9, 0.999) if a.betas is None else tuple(a.betas)
    opt = optim.make(a.optimizer, a.lr, weight_decay=a.weight_decay, **kw)
    record = fm.Record(steps=int(a.record) if a.record.isdigit() else a.record, metrics=("loss", "accuracy"))
    mem = fm.AssociativeMemory(E, U, layernorm=a.layernorm)
    task = fm.Task.zipf(a.N, a.M, a.alpha)
    print(f"fastmem run: N={a.N} M={a.M} d={a.d} {opt} batch={a.batch_size or 'full'} steps={a.steps:,}", flush=True)
    t0 = time.perf_counter()
    try:
        run = fm.train(mem, task, opt, a.steps, batch_size=a.batch_size or None, seed=a.seed, record=record,
                       backend=a.backend)
    except KeyboardInterrupt as exc:  # what was recorded before Ctrl-C is kept
        if getattr(exc, "run", None) is not None and a.out:
            _write_metrics(a.out, exc.run)
            print(f"metrics so far written to {a.out}", file=sys.stderr)
        raise
    secs = time.perf_counter() - t0
    print(f"status {run.status}: {run.steps_done} steps in {secs:.3f} s ({run.steps_done / max(secs, 1e-12):,.0f} "
          f"steps/s) on backend {run.backend}")
    if len(run.steps):
        print(f"loss {run.loss[0]:.6g} -> {run.loss[-1]:.6g}, accuracy {run.accuracy[0]:.4f} -> {run.accuracy[-1]:.4f}")
    if a.out:
        _write_metrics(a.out, run)
        print(f"metrics written to {a.out}")
    if a.plot:
        from .plot import plot_run

        title = f"N={a.N} M={a.M} d={a.d} {a.optimizer} lr={a.lr} batch={a.batch_size or 'full'}"
        _write_whole("--plot", a.plot, lambda tmp: plot_run(run, tmp, title=title))
        print(f"plot written to {a.plot}")
    return 0 if run.status == "ok" else 3


def _cmd_reproduce(a):
    from .reproduce import EXPERIMENTS, reproduce

    if a.all and a.name:
        raise InvalidArgumentError(f"name: --all runs every experiment; give {a.name!r} or --all, not both")
    if not (a.list or not (a.all or a.name)):
        if a.name and a.name not in EXPERIMENTS:
            raise InvalidArgumentError(f"name: expected one of {sorted(EXPERIMENTS)}, got {a.name!r}")
        if a.source is not None and not (a.all or EXPERIMENTS[a.name].takes_a_sweep):
            raise InvalidArgumentError(f"--from: a sweep folder for {[e.name for e in EXPERIMENTS.values() if e.takes_a_sweep]}"
                                       f" only, not {a.name!r}")
        _writable_folder("--out", a.out)  # before the work, not after it

    if a.list or not (a.all or a.name):
        for e in EXPERIMENTS.values():
            took = f" (about {e.minutes:g} min)" if e.minutes else ""
            took += f" [--full: the paper's size, about {e.full_minutes:g} min]" if e.full_minutes else ""
            print(f"{e.name:<16} {e.summary}{took}")
        return 0
    names = list(EXPERIMENTS) if a.all else [a.name]
    failed = []
    from tqdm.auto import tqdm

    # one bar over the experiments, weighted by how long each takes (a few seconds: 0.1 min)
    weight = {n: EXPERIMENTS[n].minutes or 0.1 for n in names}
    bar = tqdm(total=round(sum(weight.values()), 1), unit="min", desc="reproduce", disable=len(names) == 1 or not
               sys.stderr.isatty(), bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min of work "
                                               "[{elapsed}<{remaining}] {postfix}")
    for name in names:
        bar.set_postfix_str(name)
        e = EXPERIMENTS[name]
        numbers = reproduce(name, a.out, full=a.full and (e.full_minutes > 0 or not a.all),
                            source=a.source if e.takes_a_sweep else None)
        bar.update(weight[name])
        # a check the docs say fastmem does not reproduce, and why, is said as such: it does not
        # fail the command; any other check not seen does (exit code 4)
        checks, known = numbers.get("checks", {}), numbers.get("known_misses", {})
        missed = [c for c, held in checks.items() if held is False]
        if checks:
            unexpected = [c for c in missed if c not in known]
        else:
            unexpected = ["holds"] if numbers.get("holds") is False else []
        verdict = ("done" if numbers.get("holds") is None else "does NOT show the expected phenomenon" if unexpected
                   else f"shows the expected phenomenon but for {len(missed)} known misses" if missed
                   else "shows the expected phenomenon")
        print(f"{name}: {verdict} ({numbers['seconds']:.1f} s) -> {a.out / (name + '.json')}")
        for c in missed:
            print(f"  known miss: {c}: {known[c]}" if c in known else f"  not seen: {c}")
        if numbers.get("holds") is False and not checks:
            print(f"  expected: {numbers.get('expected', 'see the JSON')}")
        if unexpected:
            failed.append(name)
    bar.close()
    return 4 if failed else 0


def _cmd_sweep(a):
    import tomllib

    from .sweeps import DEFAULT_EXPERIMENT, count, sweep

    try:
        with open(a.grid, "rb") as f:
            spec = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgumentError(f"grid: expected a readable TOML file, got {str(a.grid)!r} "
                                   f"({getattr(exc, 'strerror', None) or exc})") from None
    grids = spec["grid"] if isinstance(spec.get("grid"), list) else [spec.get("grid", spec)]
    if not all(isinstance(g, dict) for g in grids):
        raise InvalidArgumentError(f"grid: expected TOML tables of keys, got {str(a.grid)!r}")
    if "grid" in spec and "experiment" in spec:  # a top-level experiment names every table's
        grids = [{"experiment": spec["experiment"], **g} for g in grids]
    total = sum(count({k: x for k, x in g.items() if k != "experiment"}, g.get("experiment", DEFAULT_EXPERIMENT))
                for g in grids)  # validates every grid before any run
    df = sweep(grids, a.out, workers=a.workers, quiet=a.quiet, chunk_size=a.chunk_size, trajectory=a.trajectory,
               max_runs=a.max_runs, extend=a.extend)
    counts = df["status"].value_counts().to_dict()
    print(f"fastmem sweep: {len(df)} of {total} runs on disk in {a.out} {counts}")
    return 0


def _cmd_report(a):
    from .sweeps.report import report

    split = lambda s: [x for x in s.split(",") if x] if s else None  # noqa: E731
    path = report(a.out, html=a.html, y=split(a.y), x=a.x, by=split(a.by), compare=a.compare, diverged=a.diverged)
    print(f"fastmem report: {path}")
    return 0


def _cmd_info(a):
    import fastmem as fm

    print(f"fastmem {fm.__version__}")
    for name, b in fm.backends().items():
        state = "available" if b["available"] else f"unavailable ({b['reason']})"
        print(f"  backend {name}: {state}")
        for k, val in b["info"].items():
            print(f"    {k}: {val}")
        for k, why in b.get("lacks", {}).items():
            print(f"    does not run {k}: {why}")
    return 0


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one line on stderr, as a user reads it: no source file, no code line."""
    print(f"fastmem: {category.__name__}: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    warnings.showwarning = _print_warning  # this process is the command line's
    parser = argparse.ArgumentParser(prog="fastmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    rp = sub.add_parser("reproduce", help="the paper's experiments: figures (PNG, PDF) and NAME.json",
                        formatter_class=_Help)
    rp.add_argument("name", nargs="?", help="an experiment (see --list)")
    rp.add_argument("--all", action="store_true", help="every experiment")
    rp.add_argument("--list", action="store_true", help="what each experiment shows")
    rp.add_argument("--out", type=Path, default=Path("reproduce-out"), help="folder for the figures and NAME.json")
    rp.add_argument("--full", action="store_true",
                    help="at the paper's size, for the experiments that run at a reduced one (see --list)")
    rp.add_argument("--from", dest="source", type=Path, default=None, metavar="OUT",
                    help="the sweep folder to draw from (scaling-law: its published grid's; else it runs the grid first)")
    sp = sub.add_parser("sweep", help="run a grid of runs (TOML), resumably, writing Parquet under --out")
    sp.add_argument("grid", type=Path, help="TOML file: keys of fm.sweep's grid, values or lists")
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    sp.add_argument("--chunk-size", type=int, default=16, help="runs per task and per file")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--trajectory", type=int, default=0, metavar="K",
                    help="also record each run's loss and error at ~K log-spaced steps (Parquet under OUT/trajectories)")
    sp.add_argument("--max-runs", type=int, default=10**6, help="refuse grids of more runs")
    sp.add_argument("--extend", action="store_true", help="add this grid's runs to an OUT that holds another grid's")
    rep = sub.add_parser("report", help="one HTML page of a sweep's folder: counts, figures, failed and diverged runs",
                         formatter_class=_Help)
    rep.add_argument("out", type=Path, help="the sweep's folder (fastmem sweep --out)")
    rep.add_argument("--html", type=Path, default=None, help="where to write the page (default: OUT/report.html)")
    rep.add_argument("--y", default=None, help="metrics to draw, comma-separated (default: the experiment's, e.g. "
                                               "error,loss)")
    rep.add_argument("--x", default=None, help="the horizontal axis (default: the numeric axis with most values)")
    rep.add_argument("--by", default=None, help="axes drawn as lines, comma-separated (default: the small categorical "
                                                "ones)")
    rep.add_argument("--compare", type=Path, default=None, metavar="OUT2",
                     help="a second sweep of the same experiment: drawn dashed, the cells that differ listed")
    rep.add_argument("--diverged", choices=("exclude", "published"), default="exclude",
                     help="diverged runs marked and counted, not averaged; or averaged with the error the "
                          "authors' code records (scaling-law)")
    sub.add_parser("info", help="version, backends built, threads, compiler flags")
    a = parser.parse_args(argv)
    try:
        return {"run": _cmd_run, "reproduce": _cmd_reproduce, "sweep": _cmd_sweep, "report": _cmd_report,
                "info": _cmd_info}[a.command](a)
    except ValueError as exc:
        print(f"fastmem {a.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        run = getattr(exc, "run", None)
        done = f" after {run.steps_done:,} steps" if run is not None else ""
        print(f"fastmem {a.command}: interrupted{done}", file=sys.stderr)
        return 130
