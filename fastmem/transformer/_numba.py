"""The induction-head kernels (kernels/induction_heads.hpp) on the numba backend: the same
algorithm as the C++ core (layer 1 from the (V+T)^2 score table, layer 2 at the loss rows only,
a T x T workspace per thread), parallel over chunks of sequences, each chunk with its own
gradient accumulators. The products are loops, not BLAS: BLAS called inside numba's threads
oversubscribes the cores (fastmem/memory/_numba.py)."""

import math

import numba as nb
import numpy as np
from numba import njit, prange

from ..backends.numba_cpu import alias_draw, bounded_index, draw_bits, splitmix64
from ..memory import _numba as memory

_FAST = {"reassoc", "contract"}  # vectorised reductions; NaN and Inf keep their meaning


# --- the sampler (the stream and the alias draws of backends/numba_cpu.py, as the core's rng.hpp) ---

@njit(cache=True)
def _draw_excluding(pi, chosen, u):
    mass = 0.0
    for v in range(len(pi)):
        if not chosen[v]:
            mass += pi[v]
    target = u * mass
    acc, last = 0.0, -1
    for v in range(len(pi)):
        if chosen[v] or pi[v] <= 0.0:
            continue
        acc += pi[v]
        last = v
        if target < acc:
            return v
    return last


@njit(cache=True, parallel=True)
def _sample(pi, pi_thresh, pi_alias, cond_thresh, cond_alias, seed, step, k, random_triggers, bigram_outputs,
            triggers, z, outs):
    B, T = outs.shape
    V = len(pi)
    key = splitmix64(np.uint64(seed))
    stride = np.uint64(2 * k + T + 1)
    for b in prange(B):
        base = (np.uint64(step) * np.uint64(B) + np.uint64(b)) * stride
        chosen = np.zeros(V, np.bool_)
        trig = np.empty(k, np.int64)
        out = np.empty(k, np.int64)
        count = np.zeros(k, np.int64)
        which = np.full(V, -1, np.int64)
        for i in range(k):
            if random_triggers:
                u = np.float64(draw_bits(key, base + np.uint64(i)) >> np.uint64(11)) * 2.0**-53
                trig[i] = _draw_excluding(pi, chosen, u)
            else:
                trig[i] = triggers[i]
            chosen[trig[i]] = True
        for i in range(k):
            bits = draw_bits(key, base + np.uint64(k + i))
            out[i] = (alias_draw(bits, cond_thresh[trig[i]], cond_alias[trig[i]]) if bigram_outputs
                      else bounded_index(bits, V))
        for i in range(k):
            which[trig[i]] = i
        z[b, 0] = alias_draw(draw_bits(key, base + np.uint64(2 * k)), pi_thresh, pi_alias)
        for t in range(T):
            j = which[z[b, t]]
            if j >= 0:
                count[j] += 1
                z[b, t + 1] = out[j]
                outs[b, t] = count[j]
            else:
                c = z[b, t]
                bits = draw_bits(key, base + np.uint64(2 * k + 1 + t))
                z[b, t + 1] = alias_draw(bits, cond_thresh[c], cond_alias[c])
                outs[b, t] = 0


def ihead_sample(tables, spec, z, outs):
    _sample(tables.pi, tables.pi_thresh, tables.pi_alias, tables.cond_thresh, tables.cond_alias, int(spec.seed),
            int(spec.step), int(spec.k), bool(spec.random_triggers), bool(spec.bigram_outputs),
            np.asarray(spec.triggers, np.int64), z, outs)


# --- small products (rows are contiguous) ----------------------------------------------------

@njit(cache=True, fastmath=_FAST, inline="always")
def _dot(a, b, n):
    acc = a.dtype.type(0)
    for j in range(n):
        acc += a[j] * b[j]
    return acc


@njit(cache=True, fastmath=_FAST, inline="always")
def _axpy(alpha, x, y, n):
    for j in range(n):
        y[j] += alpha * x[j]


@njit(cache=True, fastmath=_FAST)
def _rows_times(A, nr, M, out, beta):
    """out[:nr] = A[:nr] @ M (beta 0) or out[:nr] += A[:nr] @ M (beta 1); M: k x c."""
    for i in range(nr):
        if beta == 0:
            out[i, :] = 0
        for q in range(M.shape[0]):
            _axpy(A[i, q], M[q], out[i], M.shape[1])


@njit(cache=True, fastmath=_FAST)
def _rows_times_t(A, nr, M, out, beta):
    """out[:nr] = A[:nr] @ M^T (beta 0) or out[:nr] += A[:nr] @ M^T (beta 1); M: c x k."""
    for i in range(nr):
        for j in range(M.shape[0]):
            x = _dot(A[i], M[j], M.shape[1])
            out[i, j] = x if beta == 0 else out[i, j] + x


@njit(cache=True, fastmath=_FAST)
def _t_times_acc(A, Bm, nr, out):
    """out += A[:nr]^T @ Bm[:nr]."""
    for i in range(nr):
        for q in range(A.shape[1]):
            _axpy(A[i, q], Bm[i], out[q], Bm.shape[1])


@njit(cache=True, fastmath=_FAST, inline="always")
def _mix_backward_row(b, g, X, dX, drow, n, d):
    """For the output row sum_s b[s] X[s] with gradient g: dX[s] += b[s] g and drow[s] = g . X[s]
    (s < n); returns sum_s b[s] drow[s], the softmax backward's dot."""
    dot = 0.0
    for s in range(n):
        drow[s] = _dot(g, X[s], d)
        dot += b[s] * drow[s]
        _axpy(b[s], g, dX[s], d)
    return dot


@njit(cache=True)
def _softmax_row(b, n):
    """b[:n] = softmax(b[:n]), weights under 1e-30 set to 0 (as the core: no subnormal tails)."""
    mx = b[0]
    for s in range(1, n):
        mx = max(mx, b[s])
    tot = 0.0
    for s in range(n):
        e = np.exp(b[s] - mx)
        b[s] = e if e >= 1e-30 else 0
        tot += b[s]
    for s in range(n):
        b[s] /= tot


# --- one sequence ---------------------------------------------------------------------------

@njit(cache=True, fastmath=_FAST)
def _forward(z, rows, G1, CT, XX, WK2, WV2, V, inv, C, H1, B1, Hr, Qk, B2, Mx, A2):
    """kernels/induction_heads.hpp's SequencePass::forward: Hr, A2 (nr x d) at the rows."""
    nr, d = len(rows), XX.shape[1]
    span = rows[nr - 1] + 1
    for t in range(span):
        for j in range(d):
            C[t, j] = CT[z[t], j] + CT[V + t, j]
            H1[t, j] = XX[z[t], j] + XX[V + t, j]
    for t in range(span):  # layer 1 from the score table
        ge, gp = G1[z[t]], G1[V + t]
        b = B1[t]
        for s in range(t + 1):
            b[s] = ge[z[s]] + gp[z[s]] + ge[V + s] + gp[V + s]
        _softmax_row(b, t + 1)
        for s in range(t + 1):
            _axpy(b[s], C[s], H1[t], d)
    for i in range(nr):
        Hr[i, :] = H1[rows[i]]
    _rows_times(Hr, nr, WK2, Qk, 0)  # q'_i = W_K2^T h1_i
    for i in range(nr):
        b = B2[i]
        for s in range(rows[i] + 1):
            b[s] = inv * _dot(Qk[i], H1[s], d)
        _softmax_row(b, rows[i] + 1)
        Mx[i, :] = 0
        for s in range(rows[i] + 1):
            _axpy(b[s], H1[s], Mx[i], d)
    _rows_times_t(Mx, nr, WV2, A2, 0)


@njit(cache=True, fastmath=_FAST)
def _backward(z, rows, weight, flags, V, inv, WK2, WV2, WO2, WU, C, H1, B1, Hr, Qk, B2, A2, H2, Gs, dH2, dA2, dMx,
              dQk, dH1, dC, drow, D, dCT, dXX, gWK2, gWO2, gWU):
    """SequencePass::loss_and_backward: the rows' loss, their gradients added to the accumulators."""
    want_wE, want_WK2, want_WO2, want_WU, layer2, layer1, anyg = flags
    nr, d = len(rows), H1.shape[1]
    span = rows[nr - 1] + 1
    for i in range(nr):
        H2[i, :] = Hr[i]
    _rows_times_t(A2, nr, WO2, H2, 1)
    _rows_times_t(H2, nr, WU, Gs, 0)
    loss = 0.0
    for i in range(nr):
        r = Gs[i]
        y = z[rows[i] + 1]
        mx = r.max()
        tot = 0.0
        for v in range(V):
            tot += math.exp(r[v] - mx)
        lse = mx + math.log(tot)
        loss += weight * (lse - r[y])
        if anyg:
            for v in range(V):
                r[v] = weight * math.exp(r[v] - lse)
            r[y] -= weight
    if not anyg:
        return loss
    _rows_times(Gs, nr, WU, dH2, 0)
    if want_WU:
        _t_times_acc(Gs, H2, nr, gWU)
    if want_WO2:
        _t_times_acc(dH2, A2, nr, gWO2)
    if not layer2:
        return loss
    dH1[:span] = 0
    _rows_times(dH2, nr, WO2, dA2, 0)
    _rows_times(dA2, nr, WV2, dMx, 0)
    for i in range(nr):
        t = rows[i]
        b = B2[i]
        dot = _mix_backward_row(b, dMx[i], H1, dH1, drow, t + 1, d)
        dQk[i, :] = 0
        for s in range(t + 1):
            ds = b[s] * (drow[s] - dot) * inv
            _axpy(ds, H1[s], dQk[i], d)
            _axpy(ds, Qk[i], dH1[s], d)
    if want_WK2:
        _t_times_acc(Hr, dQk, nr, gWK2)
    _rows_times_t(dQk, nr, WK2, dH2, 1)  # the rows' own h1: residual and query side
    for i in range(nr):
        dH1[rows[i]] += dH2[i]
    if not layer1:
        return loss
    dC[:span] = 0
    for t in range(span):
        b = B1[t]
        dot = _mix_backward_row(b, dH1[t], C, dC, drow, t + 1, d)
        de, dp = D[z[t]], D[V + t]
        for s in range(t + 1):
            ds = b[s] * (drow[s] - dot)
            de[z[s]] += ds
            dp[z[s]] += ds
            de[V + s] += ds
            dp[V + s] += ds
    if want_wE:
        for t in range(span):
            dXX[z[t]] += dH1[t]
            dCT[z[t]] += dC[t]
    return loss


# --- the batch ------------------------------------------------------------------------------

def _tables(w, T):
    """Layer1Tables: XX = [wE; P] ((V+T) x d), G1 = XX W_K1 XX^T / sqrt d, VO = W_O1 W_V1, CT = XX VO^T."""
    XX = np.ascontiguousarray(np.concatenate([w.wE, w.P[:T]]))
    d = XX.shape[1]
    G1 = np.ascontiguousarray((XX @ w.WK1) @ XX.T * XX.dtype.type(1 / math.sqrt(d)))
    VO = w.WO1 @ w.WV1
    return XX, G1, VO, np.ascontiguousarray(XX @ VO.T)


def _chunks(B):
    n = max(1, min(B, nb.get_num_threads()))
    return n, np.linspace(0, B, n + 1).astype(np.int64)


@njit(cache=True)
def _forward_workspace(T, d, dt):
    """One chunk's buffers of _forward: C, H1, B1, Hr, Qk, B2, Mx, A2."""
    return (np.empty((T, d), dt), np.empty((T, d), dt), np.empty((T, T), dt), np.empty((T, d), dt),
            np.empty((T, d), dt), np.empty((T, T), dt), np.empty((T, d), dt), np.empty((T, d), dt))


@njit(cache=True, parallel=True)
def _rows_forward(z, ptr, idx, G1, CT, XX, WK2, WV2, V, inv, bounds, Hr, A2):
    T, d = z.shape[1] - 1, XX.shape[1]
    dt = XX.dtype
    for c in prange(len(bounds) - 1):
        C, H1, B1, hr, qk, b2, mx, a2 = _forward_workspace(T, d, dt)
        for b in range(bounds[c], bounds[c + 1]):
            r0, r1 = ptr[b], ptr[b + 1]
            if r1 == r0:
                continue
            _forward(z[b], idx[r0:r1], G1, CT, XX, WK2, WV2, V, inv, C, H1, B1, hr, qk, b2, mx, a2)
            Hr[r0:r1] = hr[:r1 - r0]
            A2[r0:r1] = a2[:r1 - r0]


def ihead_rows_forward(weights, z, rows, Hr, A2):
    w = weights
    T = z.shape[1] - 1
    XX, G1, _, CT = _tables(w, T)
    d = XX.shape[1]
    _, bounds = _chunks(z.shape[0])
    _rows_forward(z, rows.ptr, rows.idx, G1, CT, XX, w.WK2, w.WV2, w.wE.shape[0], XX.dtype.type(1 / math.sqrt(d)),
                  bounds, Hr, A2)


@njit(cache=True, parallel=True)
def _loss_grads(z, ptr, idx, G1, CT, XX, WK2, WV2, WO2, WU, inv, weight, flags, bounds, D, dCT, dXX, gWK2, gWO2,
                gWU, losses):
    T, d = z.shape[1] - 1, XX.shape[1]
    V = WU.shape[0]
    dt = XX.dtype
    for c in prange(len(bounds) - 1):
        C, H1, B1, hr, qk, b2, mx, a2 = _forward_workspace(T, d, dt)
        H2, Gs, dH2, dA2, dMx = (np.empty((T, d), dt), np.empty((T, V), dt), np.empty((T, d), dt),
                                 np.empty((T, d), dt), np.empty((T, d), dt))
        dQk, dH1, dC, drow = np.empty((T, d), dt), np.empty((T, d), dt), np.empty((T, d), dt), np.empty(T, dt)
        for b in range(bounds[c], bounds[c + 1]):
            r0, r1 = ptr[b], ptr[b + 1]
            if r1 == r0:
                continue
            rows = idx[r0:r1]
            _forward(z[b], rows, G1, CT, XX, WK2, WV2, V, inv, C, H1, B1, hr, qk, b2, mx, a2)
            losses[c] += _backward(z[b], rows, weight, flags, V, inv, WK2, WV2, WO2, WU, C, H1, B1, hr, qk, b2, a2, H2,
                                   Gs, dH2, dA2, dMx, dQk, dH1, dC, drow, D[c], dCT[c], dXX[c], gWK2[c], gWO2[c],
                                   gWU[c])


def ihead_loss_grads(weights, z, rows, weight, grads):
    w = weights
    T = z.shape[1] - 1
    V, d = w.wE.shape
    dt = w.wE.dtype
    XX, G1, VO, CT = _tables(w, T)
    want = {k: getattr(grads, k) is not None for k in grads._fields}
    layer1 = want["wE"] or want["WK1"]
    layer2 = layer1 or want["WK2"]
    flags = (want["wE"], want["WK2"], want["WO2"], want["WU"], layer2, layer1, any(want.values()))
    n, bounds = _chunks(z.shape[0])

    def acc(on, r, c):  # per-chunk accumulators, a placeholder where not asked for
        return np.zeros((n, r, c) if on else (n, 1, 1), dt)

    m1 = V + T
    D, dCT, dXX = acc(layer1, m1, m1), acc(want["wE"], V, d), acc(want["wE"], V, d)
    gWK2, gWO2, gWU = acc(want["WK2"], d, d), acc(want["WO2"], d, d), acc(want["WU"], V, d)
    losses = np.zeros(n)
    s = dt.type(1 / math.sqrt(d))
    _loss_grads(z, rows.ptr, rows.idx, G1, CT, XX, w.WK2, w.WV2, w.WO2, w.WU, s, float(weight), flags, bounds, D, dCT,
                dXX, gWK2, gWO2, gWU, losses)
    for name, a in (("WK2", gWK2), ("WO2", gWO2), ("WU", gWU)):
        if want[name]:
            getattr(grads, name)[...] = a.sum(0)
    if layer1:
        Dsum = D.sum(0)
        DX = Dsum @ XX
        if want["WK1"]:
            grads.WK1[...] = s * (XX.T @ DX)  # dW_K1 = XX^T D XX / sqrt d
        if want["wE"]:  # the residual, the values and both sides of the scores
            grads.wE[...] = dXX.sum(0) + dCT.sum(0) @ VO + s * (DX[:V] @ w.WK1.T + (Dsum.T @ XX)[:V] @ w.WK1)
    return float(losses.sum())


def ihead_wo2_grads(Hr, A2, WU, y, Ws, weight, G, loss):
    """Each run's memory step on the memory's numba kernels (fastmem/memory/_numba.py)."""
    n, d = Hr.shape
    w = np.full(n, weight, Hr.dtype)
    H, lse, zy, zo = np.empty_like(Hr), np.empty(n, Hr.dtype), np.empty(n, Hr.dtype), np.empty(n, Hr.dtype)
    for r in range(len(Ws)):
        memory.softmax_xent_grad(Hr + A2 @ Ws[r], WU, y, w, H, lse, zy, zo, 0)
        G[r] = 0
        memory.sgd_rank_update(G[r], A2, H, 1.0)
        loss[r] = float((lse.astype(np.float64) - zy).sum() * weight)
