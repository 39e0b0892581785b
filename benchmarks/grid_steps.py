"""Milliseconds per step of the scaling-law grid's costliest runs (Adam with betas (0, 0),
N = 100, M = 5), each a whole `run_one` of the sweep, one thread, median of 3, as JSON.

    python benchmarks/grid_steps.py
    PYTHONPATH=/path/to/other/build python benchmarks/grid_steps.py   # the same on another build

Two builds compared: alternate the two commands (the machine is shared and noisy).
"""

import json
import time

from fastmem.sweeps import run_one
from fastmem.sweeps.runner import _single_threaded

# (d, layernorm, batch_size, ntrain); ntrain = batch_size: a one-step run, i.e. the set-up
CONFIGS = [(1000, ln, b, 102400) for ln in (False, True) for b in (16, 256)] + \
          [(500, ln, 16, 102400) for ln in (False, True)] + [(1000, ln, 1024, 1024) for ln in (False, True)]


def main():
    out = {}
    with _single_threaded():
        for d, ln, b, ntrain in CONFIGS:
            c = dict(N=100, M=5, alpha=2.0, seed=42, lr=1.0, ntrain=ntrain, model="matrix", d=d, optimizer="adam",
                     layernorm=ln, batch_size=b)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                run_one(c)
                times.append(time.perf_counter() - t)
            out[f"d={d} layernorm={ln} batch={b} steps={ntrain // b}"] = round(sorted(times)[1] / (ntrain // b) * 1e3, 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
