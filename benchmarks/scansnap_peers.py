"""Scan and Snap: fastmem's histogram kernels against a PyTorch port of the authors' one-hot
Model2 (tests/torch_scansnap.py), side by side in one run.

    python benchmarks/scansnap_peers.py [--torch-seeds 1] [--skip-scale-torch]

1. Syn-Small (100 iterations, batch 128, L = 128): the loss at iterations 2..10 against the
   authors' log (one seed, and the mean of 10).
2. Fig. 6's 640-run sweep: fastmem through fm.sweep (2 workers) against the port run the same
   way, one process per core (one torch thread each) over the same grid; with --torch-seeds k < 10
   the port runs k seeds per cell and its time is scaled by 10 / k (runs of a cell cost the same).
3. Scale: M = 8,192 tokens, L = 512, batch 128: one sampled step (fastmem: the time of a 21-step
   call less a 1-step call, over 20; the port: one step), each in its own process for its peak
   memory; the population step with 64 facts.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import fastmem as fm
from _ports import load_port

ss = fm.scansnap
GRID = {"num_last": [1, 3, 5, 10], "lr_z": [0.5, 1.0, 2.0, 3.0], "ratio": [1.0, 2.0, 5.0, 10.0],
        "seed": list(range(1, 11))}


def _port():
    return load_port("torch_scansnap")


def scale_facts():
    """M = 128 + 64 * 124 + 64 + 64 = 8,192 tokens, 64 facts of 252 context tokens each."""
    return ss.Facts.synthetic(num_last=64, num_next_per_last=1, num_common=128, num_common_per_last=0,
                              num_unique_per_next=124)


def _torch_run(c):
    import torch

    torch.set_num_threads(1)
    tss = _port()
    facts = ss.syn_medium(c["num_last"])
    Y, Z = ss.init(facts.M, "torch", seed=c["seed"], dtype=np.float32)
    model = tss.Model2(facts.M, Y, Z, dtype=torch.float32)
    opts = tss.optimizers(model, c["lr_z"] * c["ratio"], c["lr_z"])
    batches = (ss.sample(facts, 128, 128, seed=c["seed"], step=t) for t in range(100))
    return tss.train(model, opts, batches)[-1]


def fig6(torch_seeds):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        df = fm.sweep(GRID, Path(d) / "fig6", experiment="scan-snap", workers=2, quiet=True)
        fast = time.perf_counter() - t
    configs = [dict(num_last=n, lr_z=lz, ratio=r, seed=s) for n in GRID["num_last"] for lz in GRID["lr_z"]
               for r in GRID["ratio"] for s in GRID["seed"][:torch_seeds]]
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_torch_run, configs, chunksize=1))
    port = (time.perf_counter() - t) * len(GRID["seed"]) / torch_seeds
    return {"runs": len(df), "ok": int((df["status"] == "ok").sum()), "fastmem_s": round(fast, 2),
            "torch_s": round(port, 1), "torch_runs_timed": len(configs), "speedup": round(port / fast, 1)}


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_fastmem(sim):
    """In its own process: per-step seconds (median of 3) and the peak memory beyond the
    parameters and the optimizer's state (Y, Z, their copies in the run, two momentum buffers)."""
    facts = scale_facts()
    M = facts.M
    Y, Z = ss.init(M, "torch", seed=0, dtype=np.float32)
    kw = dict(batch=128, L=512, Y=Y, Z=Z, simulator=sim, record_steps=[], dtype=np.float32)
    ss.train(facts, 1, **kw)
    per = []
    for _ in range(3):  # a call's fixed cost (Y's transposed copy, the checks) cancels in the difference
        t = time.perf_counter()
        ss.train(facts, 1, **kw)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        ss.train(facts, 21, **kw)
        per.append((time.perf_counter() - t - t1) / 20)
    params_gb = 6 * M * M * 4 / 2**30  # Y, Z, the run's Y^T and Z, two momentum buffers
    return {"step_s": statistics.median(per), "steps_s": per, "peak_gb": _peak_gb(),
            "beyond_params_gb": _peak_gb() - params_gb}


def child_torch():
    import torch

    tss = _port()
    facts = scale_facts()
    Y, Z = ss.init(facts.M, "torch", seed=0, dtype=np.float32)
    model = tss.Model2(facts.M, Y, Z, dtype=torch.float32)
    opts = tss.optimizers(model, 1.0, 1.0)
    batch = ss.sample(facts, 128, 512, seed=0, step=0)
    t = time.perf_counter()
    tss.train(model, opts, [batch])
    return {"step_s": time.perf_counter() - t, "peak_gb": _peak_gb(), "threads": torch.get_num_threads()}


def _in_child(what):
    out = subprocess.run([sys.executable, __file__, "--child", what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--torch-seeds", type=int, default=1)
    p.add_argument("--skip-scale-torch", action="store_true")
    p.add_argument("--child")
    a = p.parse_args()
    if a.child:
        fn = {"sampled": lambda: child_fastmem("sampled"), "population": lambda: child_fastmem("population"),
              "torch": child_torch}[a.child]
        print(json.dumps(fn()))
        return
    print(f"fastmem {fm.__version__}, backend cpp ({fm.backends()['cpp']['info'].get('cpu_level')}), "
          f"{fm.get_num_threads()} threads")
    facts = ss.syn_small()
    runs = np.array([ss.train(facts, 11, seed=s, record=()).loss for s in range(10)])
    authors = {2: 2.368, 4: 0.733, 6: 0.161, 8: 0.044, 10: 0.013}
    print("1. Syn-Small loss (iteration: seed 0 / mean of 10 seeds / the authors' log):")
    for t, want in authors.items():
        print(f"   {t:2d}: {runs[0, t]:.4f} ({runs[0, t] / want - 1:+.1%})  {runs[:, t].mean():.4f} "
              f"({runs[:, t].mean() / want - 1:+.1%})  {want}")
    print(f"   iteration 0: {runs[0, 0]:.9f}, ln 34 = {np.log(34):.9f}")
    r = fig6(a.torch_seeds)
    print(f"2. Fig. 6 sweep, {r['runs']} runs ({r['ok']} ok): fastmem {r['fastmem_s']} s (fm.sweep, 2 workers); "
          f"PyTorch port {r['torch_s']} s (2 processes; {r['torch_runs_timed']} runs timed, scaled): "
          f"{r['speedup']}x")
    f = _in_child("sampled")
    pop = _in_child("population")
    print(f"3. M = 8,192, L = 512, batch 128, float32: fastmem sampled step {f['step_s'] * 1e3:.0f} ms "
          f"(steps {[round(x * 1e3) for x in f['steps_s']]} ms), peak {f['peak_gb']:.2f} GiB, "
          f"{f['beyond_params_gb']:.2f} GiB beyond Y, Z and the optimizer's state")
    print(f"   population step (64 facts): {pop['step_s'] * 1e3:.0f} ms")
    if not a.skip_scale_torch:
        t = _in_child("torch")
        print(f"   PyTorch one-hot port: one step {t['step_s']:.1f} s ({t['threads']} threads), "
              f"peak {t['peak_gb']:.2f} GiB: {t['step_s'] / f['step_s']:.0f}x")


if __name__ == "__main__":
    main()
