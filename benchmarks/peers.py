"""fastmem against straightforward numpy, PyTorch and JAX implementations, side by side.

    python benchmarks/peers.py [--repeats 7] [--only sgd,gd_step] [--json out.json]

Each workload builds every available implementation once (compiling / warming it up),
then times them interleaved, ``repeats`` rounds, and prints the median of each and its
ratio to the first row's median (fastmem) from the same rounds (ratio > 1: slower).
PyTorch and JAX are optional (the ``peers`` extra); a missing one is reported, not faked.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import fastmem as fm


def _try_import(name):
    try:
        return __import__(name), None
    except ImportError as exc:
        return None, str(exc)


# --- workload: the scaling-law regime, 6,400 SGD steps -------------------------------

def sgd_workload(N=100, M=5, d=100, batch=16, steps=6400, lr=1.0, representations=("auto",)):
    task = fm.Task.zipf(N, M, 2.0)
    E, U = fm.embeddings.gaussian(N, M, d, seed=0)
    mem = fm.AssociativeMemory(E, U)
    X = fm.kernels.sample_tokens(task, steps, batch, seed=42)
    Y = task.y[X]
    impls, finals = {}, {}

    def fastmem_run(rep):
        # W is part of the result: a dual run's rebuild is timed too
        run = fm.train(mem, task, fm.SGD(lr=lr), steps, batch_size=batch, seed=42,
                       record=fm.Record(steps=[], metrics=()), representation=rep)
        finals["fastmem" if rep == representations[0] else f"fastmem {rep}"] = run.W
    for rep in representations:
        name = "fastmem" if rep == representations[0] else f"fastmem {rep}"
        impls[name] = lambda rep=rep: fastmem_run(rep)

    torch, _ = _try_import("torch")
    if torch is not None:
        Et, Ut = torch.from_numpy(E), torch.from_numpy(U)
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

        def make_torch_run(name, loss_fn):
            def torch_run():
                W = torch.zeros(d, d, requires_grad=True)
                opt = torch.optim.SGD([W], lr=lr)
                for t in range(steps):
                    opt.zero_grad()
                    loss_fn(W, Xt[t], Yt[t]).backward()
                    opt.step()
                finals[name] = W.detach().numpy()
            return torch_run

        def torch_loss(W, x, y):
            return torch.nn.functional.cross_entropy(Et[x] @ W @ Ut.T, y)
        impls["torch"] = make_torch_run("torch", torch_loss)
        try:  # torch.compile needs a working C++ toolchain; where it fails, the row is left out
            compiled = torch.compile(torch_loss)
            compiled(torch.zeros(d, d, requires_grad=True), Xt[0], Yt[0]).backward()
            impls["torch.compile"] = make_torch_run("torch.compile", compiled)
        except Exception as exc:  # noqa: BLE001
            print(f"torch.compile unavailable: {type(exc).__name__}: {exc}"[:200])

    jax, _ = _try_import("jax")
    if jax is not None:
        import jax.numpy as jnp

        Ej, Uj, Xj, Yj = jnp.asarray(E), jnp.asarray(U), jnp.asarray(X), jnp.asarray(Y)

        def loss_fn(W, x, y):
            z = Ej[x] @ W @ Uj.T
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])

        def step(W, xy):
            return W - lr * jax.grad(loss_fn)(W, *xy), None

        run_scan = jax.jit(lambda W: jax.lax.scan(step, W, (Xj, Yj))[0])

        def jax_run():
            finals["jax"] = np.asarray(run_scan(jnp.zeros((d, d), jnp.float32)).block_until_ready())
        impls["jax (jit + lax.scan)"] = jax_run

    def check():
        ref = finals["fastmem"]
        return {k: float(np.abs(v - ref).max() / np.abs(ref).max()) for k, v in finals.items() if k != "fastmem"}
    return impls, check


# --- workload: many independent runs (a seed sweep), batched by JAX's vmap ---------------

def many_runs_workload(runs=64, N=100, M=5, d=100, batch=16, steps=1000, lr=1.0):
    task = fm.Task.zipf(N, M, 2.0)
    E, U = fm.embeddings.gaussian(N, M, d, seed=0)
    mem = fm.AssociativeMemory(E, U)
    X = np.stack([fm.kernels.sample_tokens(task, steps, batch, seed=s) for s in range(runs)])
    out = {}
    record = fm.Record(steps=[], metrics=())

    def fastmem_runs():
        out["fastmem"] = np.stack([fm.train(mem, task, fm.SGD(lr=lr), steps, batch_size=batch, seed=s,
                                            record=record).W for s in range(runs)])
    impls = {"fastmem (a loop of fm.train)": fastmem_runs}
    jax, _ = _try_import("jax")
    if jax is not None:
        import jax.numpy as jnp

        Ej, Uj, yj = jnp.asarray(E), jnp.asarray(U), jnp.asarray(task.y)

        def loss_fn(W, x):
            z = Ej[x] @ W @ Uj.T
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, yj[x][:, None], axis=1)[:, 0])

        def one_run(Xr):
            return jax.lax.scan(lambda W, x: (W - lr * jax.grad(loss_fn)(W, x), None), jnp.zeros((d, d)), Xr)[0]
        batched = jax.jit(jax.vmap(one_run))
        Xj = jnp.asarray(X)

        def jax_runs():
            out["jax"] = np.asarray(batched(Xj).block_until_ready())
        impls["jax (jit + vmap + lax.scan)"] = jax_runs

    def check():
        return {k: float(np.abs(v - out["fastmem"]).max() / np.abs(out["fastmem"]).max())
                for k, v in out.items() if k != "fastmem"}
    return impls, check


# --- workload: one full-batch GD step, N = M = d = 2048 ------------------------------

def gd_step_workload(N=2048, M=2048, d=2048, lr=0.1):
    rng = np.random.default_rng(0)
    scale = np.float32(1 / np.sqrt(d))  # a float32 scalar: NumPy 2 keeps the arrays float32
    E, U, W0 = (rng.standard_normal((n, d), dtype=np.float32) * scale for n in (N, M, d))
    task = fm.Task.uniform(N, M)
    mem = fm.AssociativeMemory(E, U, W=W0)
    p32, y = task.p.astype(np.float32), task.y
    A, B = rng.standard_normal((d, d), dtype=np.float32), rng.standard_normal((d, d), dtype=np.float32)
    out = {}

    def fastmem_step():
        out["fastmem"] = fm.train(mem, task, fm.SGD(lr=lr), 1, record=fm.Record(steps=[], metrics=())).W

    def numpy_step():
        Q = E @ W0
        Z = Q @ U.T
        Z -= Z.max(axis=1, keepdims=True)
        np.exp(Z, out=Z)
        Z /= Z.sum(axis=1, keepdims=True)
        Z[np.arange(N), y] -= 1.0
        Z *= p32[:, None]
        out["numpy"] = W0 - lr * (E.T @ (Z @ U))

    # The same FLOP count as the step (four d^3-sized products), as plain sgemm calls.
    def sgemm_x4():
        for _ in range(4):
            A @ B

    impls = {"fastmem": fastmem_step, "numpy step": numpy_step, "4 x sgemm (numpy)": sgemm_x4}
    flops = 2 * N * d * d + 2 * N * M * d + 2 * N * M * d + 2 * N * d * d

    def check():
        ref = out["fastmem"]
        return {"numpy": float(np.abs(out["numpy"] - ref).max() / np.abs(ref - W0).max()),
                "GFLOP/step": flops / 1e9}
    return impls, check


# --- workload: large M, streamed (run in a subprocess to read its peak memory) -------

_LARGE_M = r"""
import json, sys, time
import numpy as np, fastmem as fm

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

N, d, M, reps = (int(a) for a in sys.argv[1:5])
rng = np.random.default_rng(0)
# in place, so that no temporary copy raises the peak before the baseline is read
E = rng.standard_normal((N, d), dtype=np.float32); E *= np.float32(d ** -0.5)
U = rng.standard_normal((M, d), dtype=np.float32); U *= np.float32(d ** -0.5)
mem = fm.AssociativeMemory(E, U)
task = fm.Task.uniform(N, M)
rec = fm.Record(steps=[], metrics=())
fm.train(mem, task, fm.SGD(lr=0.1), 0, record=rec)  # load the extension before the baseline
# Reset the peak resident set (Linux: clear_refs 5), so that temporaries of the set-up
# above do not hide the step's own peak.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = rss_kib("VmRSS:")
times = []
for _ in range(reps):
    t = time.perf_counter()
    fm.train(mem, task, fm.SGD(lr=0.1), 1, record=rec)
    times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "extra_peak_MiB": (rss_kib("VmHWM:") - base) / 1024}))
"""


def large_m(N=4096, d=256, Ms=(4096, 131072), reps=5):
    rows = {}
    for M in Ms:
        r = subprocess.run([sys.executable, "-c", _LARGE_M, str(N), str(d), str(M), str(reps)],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout)
        med = statistics.median(res["times"])
        rows[M] = {"median_s": med, "ns_per_score": med / (N * M) * 1e9, "extra_peak_MiB": res["extra_peak_MiB"]}
    return rows


# --- workload: full-batch GD where the dual pays: N = M = 1024, d = 8192 -------------

def dual_gd_workload(N=1024, M=1024, d=8192, steps=20, lr=1.0):
    E, U = fm.embeddings.sphere(N, M, d, seed=0)
    mem, task = fm.AssociativeMemory(E, U), fm.Task.zipf(N, M, 1.0)
    last = fm.Record(steps="last", metrics=("loss", "accuracy"))
    out = {}

    def run(rep, with_W):
        r = fm.train(mem, task, fm.SGD(lr=lr), steps, record=last, representation=rep)
        out[rep] = (r.loss[-1], r.W if with_W else None)
    # A dual run reads its metrics from the scores and builds W only on request:
    # timed without and with that rebuild.
    impls = {"fastmem dual": lambda: run("dual", False), "fastmem dual + W": lambda: run("dual", True),
             "fastmem primal": lambda: run("primal", True)}

    def check():
        (ld, Wd), (lp, Wp) = out["dual"], out["primal"]
        return {"final loss dual / primal": f"{ld:.6g} / {lp:.6g}",
                "W rel. diff": float(np.abs(Wd - Wp).max() / np.abs(Wp).max())}
    return impls, check


WORKLOADS = {
    "sgd": sgd_workload,
    "many_runs": many_runs_workload,
    "gd_step": gd_step_workload,
    "dual_gd": dual_gd_workload,
    **{f"dual_sgd_d{d}": (lambda d=d: sgd_workload(d=d, representations=("auto", "dual", "primal")))
       for d in (10, 100, 1000)},
}


def run_workload(name, repeats):
    impls, check = WORKLOADS[name]()
    for f in impls.values():
        f()  # compile and warm up
    times = {k: [] for k in impls}
    for _ in range(repeats):
        for k, f in impls.items():
            # Let the previous implementation's spinning worker threads (OpenBLAS,
            # OpenMP, XLA) park, so that each one starts on an idle machine.
            time.sleep(0.3)
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = next(iter(med))  # the first implementation listed is the baseline
    return {"median_s": med, "ratio_to_baseline": {k: v / med[base] for k, v in med.items()}, "check": check()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", default=",".join([*WORKLOADS, "large_m"]))
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    report = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "fastmem": fm.__version__, "backends": fm.backends()["cpp"]["info"],
              "missing_peers": {n: err for n in ("torch", "jax") for _, err in [_try_import(n)] if err},
              "workloads": {}}
    for name in a.only.split(","):
        if name == "large_m":
            res = large_m()
            report["workloads"][name] = res
            print("\nlarge_m (N=4096, d=256, one GD step):")
            for M, row in res.items():
                print(f"  M={M:>7}: {row['median_s']:.3f} s, {row['ns_per_score']:.3f} ns/score, "
                      f"peak memory beyond inputs {row['extra_peak_MiB']:.1f} MiB")
            a_, b_ = (res[M]["ns_per_score"] for M in sorted(res))
            print(f"  time per score, M=131072 / M=4096: {b_ / a_:.2f}")
            continue
        res = run_workload(name, a.repeats)
        report["workloads"][name] = res
        print(f"\n{name} (median of {a.repeats}, ratio = time / time of the first row):")
        for k, v in res["median_s"].items():
            print(f"  {k:<24} {v * 1e3:10.2f} ms   x{res['ratio_to_baseline'][k]:.2f}")
        print(f"  check: {res['check']}")
    if report["missing_peers"]:
        print(f"\nmissing peers: {report['missing_peers']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
