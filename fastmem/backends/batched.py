"""train_many as batched array products over all runs, for any array library with numpy's
API: CuPy's matmul on stacks is cuBLAS's strided-batched GEMM, the device path for runs too
large for one thread block. Not a registered backend: the cuda adapter calls it, and the
tests run it on numpy against the reference."""


def train_many_batched(xp, E, U, W, p, y, lr, steps, loss, accuracy, status):
    """The train_many kernel's contract (see fastmem/backends/__init__.py); a diverged run is
    frozen by a mask, so the loop never synchronises with the host."""
    M = U.shape[1]
    Et, Ut = E.transpose(0, 2, 1), U.transpose(0, 2, 1)
    onehot = (xp.arange(M)[None, None, :] == y[:, :, None]).astype(W.dtype)
    pt = p.astype(W.dtype)[:, :, None]
    step = lr.astype(W.dtype)[:, None, None]
    active = xp.ones(E.shape[0], dtype=bool)
    status[...] = 0
    for t in range(steps + 1):
        Z = E @ W @ Ut
        zmax = Z.max(axis=2, keepdims=True)
        lse = zmax + xp.log(xp.exp(Z - zmax).sum(axis=2, keepdims=True))
        zy = xp.take_along_axis(Z, y[:, :, None], axis=2)
        zother = xp.where(onehot > 0, -xp.inf, Z).max(axis=2, keepdims=True)
        lo = (p * (lse - zy)[:, :, 0]).sum(axis=1)
        acc = (p * ((zy - zother)[:, :, 0] > 0)).sum(axis=1)
        bad = active & ~xp.isfinite(lo)
        ending = bad | (active & (t == steps))
        loss[...] = xp.where(ending, lo, loss)
        accuracy[...] = xp.where(ending, acc, accuracy)
        status[...] = xp.where(bad, 1, status)
        active &= ~bad
        if t == steps:
            break
        P = pt * (xp.exp(Z - lse) - onehot)
        W[...] = xp.where(active[:, None, None], W - step * (Et @ (P @ U)), W)
