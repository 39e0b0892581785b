"""fastmem report's time on a folder of the published grid's size (40,320 runs, 2,520 chunks of 16,
as `fastmem sweep examples/scaling_law_grid.toml` writes them), side by side with reading the
folder alone. The runs' metrics are drawn at random: what the report costs depends on the rows
and files, not on their values.

    python benchmarks/report_time.py [--keep FOLDER]
"""

import argparse
import json
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

import fastmem as fm
from fastmem.memory.experiments import SCALING_LAW
from fastmem.sweeps import grid as g
from fastmem.sweeps import store
from fastmem.sweeps.runner import columns


def make(out):
    spec = tomllib.loads(Path(__file__).with_name("..").joinpath("examples/scaling_law_grid.toml").read_text())["grid"]
    ax = g.axes(spec, SCALING_LAW)
    configs = g.expand(ax)
    rng = np.random.default_rng(0)
    rows = [{**c, "run_id": g.run_id(c, SCALING_LAW.float_keys),
             "status": "diverged" if rng.random() < 0.05 else "ok", "error": float(rng.random() / c["d"] ** 0.5),
             "loss": float(rng.random()), "steps": c["ntrain"] // c["batch_size"], "seconds": float(rng.random()),
             "representation": "primal", "message": ""} for c in configs]
    (out / "runs").mkdir(parents=True)
    for i in range(0, len(rows), 16):
        store.write_atomic(pd.DataFrame(rows[i:i + 16], columns=columns(SCALING_LAW)), out / "runs",
                           f"chunk-{i // 16:05d}.parquet")
    (out / "sweep.json").write_text(json.dumps({"format": store.FORMAT, "experiment": "scaling-law", "grids": [spec],
                                                "sessions": []}))
    return len(rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--keep", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = a.keep or Path(tmp) / "scaling-law"
        n = make(out) if not (out / "runs").exists() else None
        t0 = time.perf_counter()
        runs = fm.load_sweep(out)
        t1 = time.perf_counter()
        path = fm.sweeps.report(out)
        t2 = time.perf_counter()
        print(f"{n or len(runs):,} runs: load_sweep {t1 - t0:.2f} s, fastmem report {t2 - t1:.2f} s "
              f"({path.stat().st_size / 1e6:.1f} MB page)")


if __name__ == "__main__":
    main()
