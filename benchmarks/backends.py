"""numba against cpp on the core workloads, medians measured side by side in one run
(interleaved, a pause between backends so that the other's threads park).

    python benchmarks/backends.py
"""

import time

import numpy as np

import fastmem as fm
from benchmarks.common import NO_RECORD, median_seconds  # the asv suite's package, beside this script


def _median(f, repeats):
    time.sleep(0.3)  # the other backend's threads park
    return median_seconds(f, repeats)


def workloads():
    task = fm.Task.zipf(100, 5, 2.0)
    for d, rep, steps in ((100, "primal", 6400), (100, "dual", 6400), (1000, "primal", 640), (1000, "dual", 6400)):
        mem = fm.AssociativeMemory(*fm.embeddings.gaussian(100, 5, d, seed=0))
        yield (f"{steps:,} SGD steps, d={d}, {rep}", 5,
               lambda b, mem=mem, rep=rep, steps=steps: fm.train(mem, task, fm.SGD(lr=1.0), steps, batch_size=16,
                                                                  seed=42, record=NO_RECORD, representation=rep,
                                                                  backend=b))
    # the scaling-law grid's trained-embedding models at its settings: Adam(0, 0), lr / d for W
    for model, d, steps in (("learnable", 100, 6400), ("learnable", 1000, 640), ("exponential", 100, 6400),
                            ("exponential", 1000, 6400)):
        E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
        W = fm.kernels.normal((d, d), seed=0, scale=d**-0.5)
        scale = {"W": 1 / d, "E": d**-0.5, "U": d**-0.5}
        yield (f"{steps:,} Adam(0, 0) steps, d={d}, {model} model", 5,
               lambda b, E=E, U=U, W=W, model=model, steps=steps, scale=scale: fm.models.train_model(
                   model, E, U, task, fm.Adam(lr=1.0, betas=(0, 0)), steps, batch_size=16, seed=42, W=W,
                   lr_scale=scale, record=fm.Record(steps="last"), backend=b))
    big = fm.AssociativeMemory(*fm.embeddings.gaussian(2048, 2048, 2048, seed=0))
    yield ("GD step, N=M=d=2048", 3,
           lambda b: fm.train(big, fm.Task.uniform(2048, 2048), fm.SGD(lr=1.0), 1, record=NO_RECORD,
                              representation="primal", backend=b))
    rng = np.random.default_rng(0)
    Q, U = rng.standard_normal((1024, 256), dtype=np.float32), rng.standard_normal((16384, 256), dtype=np.float32)
    y = rng.integers(0, 16384, 1024)
    yield "softmax_xent_grad, b=1024, M=16,384, d=256", 5, lambda b: fm.kernels.softmax_xent_grad(Q, U, y, backend=b)
    R, d = 256, 16
    E, U3, W = (rng.standard_normal((R, d, d), dtype=np.float32) / 4 for _ in range(3))
    yield (f"train_many, {R} runs d=N=M={d}, 200 GD steps", 5,
           lambda b: fm.train_many(E, U3, W, np.full(d, 1 / d), np.arange(d), 1.0, 200, backend=b))


def main():
    print("| workload | cpp | numba | numba / cpp |\n|---|---|---|---|")
    for name, repeats, f in workloads():
        t = {b: _median(lambda b=b: f(b), repeats) for b in ("cpp", "numba")}
        print(f"| {name} | {t['cpp'] * 1e3:.1f} ms | {t['numba'] * 1e3:.1f} ms | {t['numba'] / t['cpp']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
