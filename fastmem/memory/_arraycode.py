"""The memory's backend code written once over an array library with numpy's API (numpy or
CuPy) and a backend's own kernels. The cuda adapter (_cuda.py) runs it on CuPy; the tests run
the same code on numpy (with the cpp kernels) against the reference, so its logic is checked
without a GPU. Not a backend module of the registry."""

from ..specs import LAYERNORM_EPS as _LN_EPS


def sgd_step(xp, softmax_xent_grad, sgd_rank_update, W, E, U, x, y, lr, layernorm, out):
    """The sgd_step kernel's contract from the fused and update kernels. Duplicate (token,
    target) draws are merged first, a sort-based segmented reduction with counts, so each
    distinct draw is read, scored and written once, in a fixed order."""
    M = U.shape[0]
    keys, counts = xp.unique(x * M + y, return_counts=True)
    ux, uy = keys // M, keys % M
    wts = (counts / x.shape[0]).astype(W.dtype)
    Eb = xp.ascontiguousarray(E[ux])
    q = Eb @ W
    if layernorm:
        r = xp.sqrt((q * q).sum(axis=1, keepdims=True) + _LN_EPS)
        q = q / r
    H = xp.empty_like(q)
    lse, zy, zother = (xp.empty(len(ux), dtype=W.dtype) for _ in range(3))
    softmax_xent_grad(q, U, uy, wts, H, lse, zy, zother, 0)
    if layernorm:
        H = (H - q * (q * H).sum(axis=1, keepdims=True)) / r
    loss = float((wts.astype(xp.float64) * (lse - zy)).sum())
    if out is not W:
        out[...] = W
    sgd_rank_update(out, Eb, xp.ascontiguousarray(H), -lr)
    return loss


def train_many_dual(xp, dual_kernel, E, U, W, p, y, lr, steps, loss, accuracy, status):
    """train_many in the dual representation: the scores Z = E W U^T and the Grams set up by
    batched products, the steps run by ``dual_kernel`` (which trains Z and accumulates A and
    returns False when it cannot take the runs), W rebuilt as W - E^T A U."""
    Et, Ut = E.transpose(0, 2, 1), U.transpose(0, 2, 1)
    Z = xp.ascontiguousarray(E @ W @ Ut)
    A = xp.empty_like(Z)
    KE, KU = xp.ascontiguousarray(E @ Et), xp.ascontiguousarray(U @ Ut)
    if not dual_kernel(p, y, lr, steps, loss, accuracy, status, Z, A, KE, KU):
        return False
    W -= Et @ (A @ U)
    return True


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
