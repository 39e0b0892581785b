"""The GPU figures of the backends issue, measured side by side on one device:

(a) the fused step at N = 16,384, d = 1,024, M = 131,072 (float32): fastmem's fused kernel
    (scores -> softmax -> cross-entropy -> gradient, scores never in global memory) against
    the cuBLAS GEMMs of the same FLOPs, torch eager cross_entropy(E @ W @ U.T) + backward,
    and torch.compile of it; peak device memory beyond the inputs;
(b) 4,096 independent memories d = N = M = 64, 1,000 full-batch GD steps: fm.train_many
    against jax.vmap of a jitted lax.scan of the same GD.

    python benchmarks/gpu.py [--json OUT]
"""

import argparse
import json
import time

import numpy as np

import fastmem as fm


def _time(f, sync, repeats=5):
    f()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _gemm_seconds(cp, Q, U, sync):
    """cuBLAS (through CuPy) for the N x M scores of Q U^T, written to memory."""
    Z = cp.empty((Q.shape[0], U.shape[0]), dtype=Q.dtype)
    return _time(lambda: cp.matmul(Q, U.T, out=Z), sync)


def fused_step(cp, N=16384, d=1024, M=131072):
    rng = cp.random.default_rng(0)
    E, U, W = (rng.standard_normal((n, d), dtype=cp.float32) / np.float32(np.sqrt(d)) for n in (N, M, d))
    x = cp.arange(N)
    y = x % M
    sync = cp.cuda.get_current_stream().synchronize
    out = {}
    Q = E @ W

    def fused():
        fm.kernels.softmax_xent_grad(Q, U, y)

    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    cp.cuda.Device().synchronize()
    out["fused_s"] = _time(fused, sync)
    H, *_ = fm.kernels.softmax_xent_grad(Q, U, y)
    out["fused_extra_bytes"] = pool.total_bytes() - before
    del H
    out["gemm_s"] = 2 * _gemm_seconds(cp, Q, U, sync)  # scores and gradient: two GEMMs of these FLOPs
    out["fused_over_gemm_flops"] = out["gemm_s"] / out["fused_s"]
    try:
        import torch
        import torch.nn.functional as F

        tE, tU = torch.as_tensor(E, device="cuda"), torch.as_tensor(U, device="cuda")
        tW = torch.as_tensor(W, device="cuda").clone().requires_grad_(True)
        ty = torch.as_tensor(y, device="cuda")

        def eager():
            tW.grad = None
            F.cross_entropy(tE @ tW @ tU.T, ty).backward()

        out["torch_eager_s"] = _time(eager, torch.cuda.synchronize)
        compiled = torch.compile(lambda W_: F.cross_entropy(tE @ W_ @ tU.T, ty))

        def comp():
            tW.grad = None
            compiled(tW).backward()

        out["torch_compile_s"] = _time(comp, torch.cuda.synchronize)
        # fastmem's whole step: read-outs, fused kernel, rank update (the same work as eager)
        Wc = W.copy()
        out["fastmem_step_s"] = _time(lambda: fm.sgd_step(Wc, E, U, x, y, lr=0.1), sync)
        out["speedup_vs_eager"] = out["torch_eager_s"] / out["fastmem_step_s"]
        out["speedup_vs_compile"] = out["torch_compile_s"] / out["fastmem_step_s"]
    except ImportError as exc:
        out["torch"] = f"missing: {exc}"
    return out


def many_small(cp, R=4096, d=64, steps=1000):
    rng = np.random.default_rng(0)
    E, U, W = (rng.standard_normal((R, d, d), dtype=np.float32) / np.float32(np.sqrt(d)) for _ in range(3))
    p = np.full(d, 1.0 / d)
    y = np.arange(d) % d
    sync = cp.cuda.get_current_stream().synchronize
    dE, dU, dW = (cp.asarray(a) for a in (E, U, W))
    out = {"fastmem_s": _time(lambda: fm.train_many(dE, dU, dW, p, y, 1.0, steps), sync, repeats=3)}
    try:
        import jax
        import jax.numpy as jnp

        def gd(E, U, W):
            def body(W, _):
                def loss(W):
                    Z = E @ W @ U.T
                    return -(jnp.asarray(p, dtype=Z.dtype) * jax.nn.log_softmax(Z)[jnp.arange(d), y]).sum()
                return W - 1.0 * jax.grad(loss)(W), None
            return jax.lax.scan(body, W, None, length=steps)[0]

        f = jax.jit(jax.vmap(gd))
        jE, jU, jW = (jnp.asarray(a) for a in (E, U, W))
        out["jax_vmap_s"] = _time(lambda: f(jE, jU, jW).block_until_ready(), lambda: None, repeats=3)
        out["speedup_vs_jax"] = out["jax_vmap_s"] / out["fastmem_s"]
    except ImportError as exc:
        out["jax"] = f"missing: {exc}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    info = fm.backends()["cuda"]
    if not info["available"]:
        raise SystemExit(f"no GPU to measure: backend cuda unavailable ({info['reason']})")
    import cupy as cp

    res = {"device": info["info"], "fused_step": fused_step(cp), "many_small": many_small(cp)}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
