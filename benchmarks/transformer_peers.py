"""The induction-head transformer: fastmem against a plain PyTorch implementation of the model
(tests/torch_transformer.py, autograd, torch.optim.SGD), side by side in one run, at the
paper's size (B = 512, T = 256, V = 65, k = 5 fixed triggers, float32, the same threads).

    python benchmarks/transformer_peers.py [--repeats 3] [--threads 2] [--sweep-steps 51]

1. One W_O^2-only SGD step at d = 64 (the batch drawn inside the step on both sides).
2. Cell 3's sweep: lr 20, 50, 100, 200 x ``--sweep-steps`` steps on common batches; fastmem's
   train_lrs timed whole, PyTorch's as 4 x steps x its median step of (1) (one run of 204 steps
   would take minutes; the steps cost the same).
3. One all-parameter step (W_K^1, W_K^2, W_O^2) at d = 64 and 128.
4. The data generator: a batch of 512 sequences against a port of the authors' per-sequence
   Python sampler (ihead_data.py's gen_seq: one rng.choice per token).
5. Peak memory of one all-parameter step at d = 64 and 128: each side in a fresh process, the
   rise of its resident high-water mark (VmHWM) over what it held before the step (model
   and batch built, one step taken at another size to load the code).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import fastmem as fm
from _ports import load_port

tr = fm.transformer
B, T = 512, 256


def median_time(f, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def authors_gen_seq(rng, pi, C, trig, V):
    """birth's gen_seq as written (fixed triggers, uniform outputs, output_counter)."""
    outs = [rng.choice(V) for _ in trig]
    seq = [rng.choice(V, p=pi)]
    for _ in range(T):
        t = seq[-1]
        if t in trig:
            seq.append(outs[list(trig).index(t)])
        else:
            seq.append(rng.choice(V, p=C[t]))
    return seq


def peak_of_step(side, d, threads):
    """(5) in this process: the MB the resident high-water mark rises by during one step."""
    torch.set_num_threads(threads)
    fm.set_num_threads(threads)
    task = tr.InductionHeads(k=5, seq_len=T)
    m = tr.TwoLayer(d=d, seed=0)
    batch = task.sample(B, seed=0)
    names = ("WK1", "WK2", "WO2")
    tiny_task = tr.InductionHeads(k=5, seq_len=8)
    tiny, tiny_batch = tr.TwoLayer(d=4, seq_len=8, seed=0), tiny_task.sample(2, seed=0)
    if side == "fastmem":
        tiny.loss_and_grads(tiny_batch, names, "all")  # the code loaded, no workspace of this size yet
        step = lambda: m.loss_and_grads(batch, names, "head")  # noqa: E731
    else:
        tt = load_port("torch_transformer")
        tm = tt.TwoLayer(m.weights, torch.float32)
        params = [tt.PARAMS[k](tm) for k in names]
        for p in tm.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        tiny_t = tt.TwoLayer(tiny.weights, torch.float32)
        tt.loss(tiny_t, tiny_batch, head=False).backward()

        def step():
            for p in params:
                p.grad = None
            tt.loss(tm, batch).backward()
    before = high_water_kb()
    step()
    return (high_water_kb() - before) / 1024


def high_water_kb():
    """This process's resident high-water mark: VmHWM (fresh at exec), else ru_maxrss (which
    Linux carries over an exec from the parent, hiding a child's rise below the parent's peak)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_memory(threads):
    out = {}
    for d in (64, 128):
        for side in ("fastmem", "torch"):
            r = subprocess.run([sys.executable, __file__, "--peak-of", side, "--d", str(d), "--threads", str(threads)],
                               capture_output=True, text=True, check=True)
            out[f"{side}_d{d}_MB"] = float(r.stdout.split()[-1])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep-steps", type=int, default=51)
    ap.add_argument("--peak-of", choices=("fastmem", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_of:
        print(f"{peak_of_step(args.peak_of, args.d, args.threads):.1f}")
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # PyTorch at its fastest (docs/transformer.md: subnormals)
    fm.set_num_threads(args.threads)
    tt = load_port("torch_transformer")
    task = tr.InductionHeads(k=5, seq_len=T)
    task.sample(1)
    out = {"threads": args.threads, "torch": torch.__version__}
    rec = tr.Record(steps=[])

    def torch_step(model, names, lr):
        params = [tt.PARAMS[k](model) for k in names]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=lr, weight_decay=1e-4)
        step = [0]

        def run():
            b = task.sample(B, seed=0, step=step[0])
            step[0] += 1
            opt.zero_grad()
            L = tt.loss(model, b)
            L.backward()
            opt.step()
        return run

    m64 = tr.TwoLayer(d=64, seed=0)
    fm_wo2 = median_time(lambda: tr.train(m64, task, 100.0, 1, record=rec), args.repeats)
    th_wo2 = median_time(torch_step(tt.TwoLayer(m64.weights, torch.float32), ("WO2",), 100.0), args.repeats)
    out["wo2_step"] = {"fastmem_s": fm_wo2, "torch_s": th_wo2, "ratio": th_wo2 / fm_wo2}
    print("W_O^2 step d=64:", out["wo2_step"], flush=True)

    lrs, S = [20.0, 50.0, 100.0, 200.0], args.sweep_steps
    t0 = time.perf_counter()
    tr.train_lrs(m64, task, lrs, S, record=tr.Record(steps=[0, S], probes=("wo2",)))
    fm_sweep = time.perf_counter() - t0
    out["sweep"] = {"fastmem_s": fm_sweep, "torch_s_estimated": 4 * S * th_wo2, "ratio": 4 * S * th_wo2 / fm_sweep}
    print("cell 3 sweep:", out["sweep"], flush=True)

    for d in (64, 128):
        m = tr.TwoLayer(d=d, seed=0)
        names = ("WK1", "WK2", "WO2")
        f = median_time(lambda: tr.train(m, task, 5.0, 1, train="all", record=rec), args.repeats)
        t = median_time(torch_step(tt.TwoLayer(m.weights, torch.float32), names, 5.0), args.repeats)
        out[f"all_step_d{d}"] = {"fastmem_s": f, "torch_s": t, "ratio": t / f}
        print(f"all step d={d}:", out[f"all_step_d{d}"], flush=True)

    fm_batch = median_time(lambda: task.sample(B, seed=1, step=2), max(args.repeats, 5))
    bg, rng, n = task.bigrams, np.random.default_rng(0), 20
    t0 = time.perf_counter()
    for _ in range(n):
        authors_gen_seq(rng, bg.pi, bg.C, list(task.trigger_tokens), bg.V)
    auth_seq = (time.perf_counter() - t0) / n
    out["sampler"] = {"fastmem_ms_per_seq": 1e3 * fm_batch / B, "authors_ms_per_seq": 1e3 * auth_seq,
                      "ratio": auth_seq / (fm_batch / B)}
    print("sampler:", out["sampler"], flush=True)
    out["peak_memory_all_step"] = peak_memory(args.threads)
    print("peak memory of one all-parameter step:", out["peak_memory_all_step"], flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
