"""The associative memory's kernels on the numba backend (fastmem.backends.numba_cpu):
softmax_xent_grad.hpp, forward_backward.hpp, metrics.hpp and the drivers of train.hpp,
train_projected.hpp and train_many.hpp as @njit loops.

Same algorithms and semantics as the C++ core (streamed online softmax, merged duplicate
draws, the counter-based sampler, one training loop under every representation as drive());
the one-hot row path of the C++ core is not specialised here (dense E gives the same result).
The learnable and exponential models (train_models.hpp) are here too: every kernel of the
memory runs on numba.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ..backends.numba_cpu import draw, driver, interruptible, lr_at, optimizer_step, serial_and_parallel, splitmix64
from ..specs import LAYERNORM_EPS as _LN_EPS
from ..specs import SHARPNESS_TOL

_BUDGET = 16 << 20  # bytes of a streamed score block, as default_chunk() in softmax_xent_grad.hpp


# --- sampling (rng.hpp) -------------------------------------------------------------

@njit(cache=True)
def _sample_into(cdf, seed, start_step, out):
    key = splitmix64(np.uint64(seed))
    b = out.shape[1]
    for t in range(out.shape[0]):
        for i in range(b):
            out[t, i] = draw(cdf, key, (start_step + t) * b + i)


def sample_tokens(cdf, seed, start_step, out):
    _sample_into(cdf, np.uint64(seed), start_step, out)


_NORMAL_STREAM = np.uint64(0x4E4F524D414C5354)  # normal.hpp's kNormalStream


@njit(cache=True)
def _normal_into(seed, scale, flat):
    key = splitmix64(np.uint64(seed) ^ _NORMAL_STREAM)
    for i in range(flat.size):
        k, l = i // 16, i % 16
        w = splitmix64(key ^ splitmix64(np.uint64(8 * k + l % 8)))
        u1 = (np.float64(w >> np.uint64(32)) + 0.5) * 2.0**-32
        u2 = np.float64(w & np.uint64(0xFFFFFFFF)) * 2.0**-32
        r = math.sqrt(-2.0 * math.log(u1))
        flat[i] = scale * (r * math.cos(2 * math.pi * u2) if l < 8 else r * math.sin(2 * math.pi * u2))


def normal_fill(seed, scale, out):
    _normal_into(np.uint64(seed), scale, out.reshape(-1))


# --- the fused kernel (softmax_xent_grad.hpp) -----------------------------------------

def _chunk(b, M, itemsize, chunk):
    if chunk > 0:
        return min(chunk, M)
    if b * M * itemsize <= _BUDGET:
        return M
    return min(M, max(256, _BUDGET // (max(b, 1) * itemsize) // 64 * 64))


@njit(cache=True, inline="always")
def _exp_nonpositive(x):
    """exp(x) for x <= 0, exactly 0 below -87 as exp_nonpositive in the C++ core: float32
    denormals from underflowing exponentials made the next BLAS product 5x slower."""
    return 0.0 if x < -87.0 else math.exp(x)


def _fused_impl(q, u, y, w, h, lse, zy, zother, chunk):
    b, d = q.shape
    M = u.shape[0]
    run_max = np.full(b, -np.inf)
    run_sum = np.zeros(b)
    h[:] = 0
    zy[:] = -np.inf
    zother[:] = -np.inf
    for c0 in range(0, M, chunk):
        cn = min(chunk, M - c0)
        uc = u if cn == M else np.ascontiguousarray(u[c0:c0 + cn])
        s = q @ uc.T
        for i in prange(b):
            ly = y[i] - c0
            omax = -np.inf
            target = -np.inf
            for j in range(cn):
                if j == ly:
                    target = s[i, j]
                elif s[i, j] > omax:
                    omax = s[i, j]
            if 0 <= ly < cn:
                zy[i] = target
            zother[i] = max(zother[i], omax)
            m_new = max(run_max[i], max(omax, target))
            acc = 0.0
            for j in range(cn):
                e = _exp_nonpositive(s[i, j] - m_new)
                s[i, j] = e
                acc += e
            if run_max[i] != -np.inf and m_new != run_max[i]:
                scale = math.exp(run_max[i] - m_new)
                run_sum[i] *= scale
                for k in range(d):
                    h[i, k] *= scale
            run_sum[i] += acc
            run_max[i] = m_new
        h += s @ uc
    for i in prange(b):
        lse[i] = run_max[i] + math.log(run_sum[i])
        inv = 1.0 / run_sum[i]
        for k in range(d):
            h[i, k] = w[i] * (h[i, k] * inv - u[y[i], k])


# Compiled twice: threads pay off on large blocks only (a minibatch of a few rows would
# spend more on waking them than on its work).
_fused_serial, _fused_parallel = serial_and_parallel(_fused_impl)


@njit(cache=True)
def _fused_rows(q, u, y, w, h, lse, zy, zother):
    """Small blocks one row at a time with one row of scores as scratch: a minibatch step
    spent more on the chunked version's temporaries and BLAS calls than on its flops."""
    b, d = q.shape
    M = u.shape[0]
    z = np.empty(M, dtype=q.dtype)
    for i in range(b):
        mx, zo, target = -np.inf, -np.inf, -np.inf
        for j in range(M):
            s = q.dtype.type(0.0)
            for k in range(d):
                s += q[i, k] * u[j, k]
            z[j] = s
            mx = max(mx, s)
            if j == y[i]:
                target = s
            elif s > zo:
                zo = s
        tot = 0.0
        for j in range(M):
            z[j] = _exp_nonpositive(z[j] - mx)
            tot += z[j]
        lse[i], zy[i], zother[i] = mx + math.log(tot), target, zo
        for k in range(d):
            h[i, k] = -w[i] * u[y[i], k]
        scale = w[i] / tot
        for j in range(M):
            c = z[j] * scale
            for k in range(d):
                h[i, k] += c * u[j, k]


@njit(cache=True)
def _fused(q, u, y, w, h, lse, zy, zother, chunk):
    if u.shape[0] <= 256 and q.shape[0] * u.shape[0] * q.shape[1] <= (1 << 18):
        _fused_rows(q, u, y, w, h, lse, zy, zother)
    elif q.shape[0] * u.shape[0] * q.shape[1] > (1 << 18):
        _fused_parallel(q, u, y, w, h, lse, zy, zother, chunk)
    else:
        _fused_serial(q, u, y, w, h, lse, zy, zother, chunk)


def softmax_xent_grad(q, u, y, w, h, lse, zy, zother, chunk):
    _fused(q, u, y, w, h, lse, zy, zother, _chunk(q.shape[0], u.shape[0], q.itemsize, chunk))


def sgd_rank_update(W, Eb, H, alpha):
    W += W.dtype.type(alpha) * (Eb.T @ H)


# --- one pass over a set of tokens (forward_backward.hpp) -----------------------------

@njit(cache=True)
def _forward_backward(E, U, W, tokens, w, targets, layernorm, chunk, read_out=None):
    """(loss, zy - zother, dL/dQ, E[tokens]); tokens: row ids; targets: per-row targets;
    read_out: E[tokens] W when already taken, else None."""
    Eb = np.ascontiguousarray(E[tokens])
    q = Eb @ W if read_out is None else read_out.copy()
    b, d = q.shape
    r = np.ones(b, dtype=q.dtype)
    if layernorm:
        for i in range(b):
            r[i] = math.sqrt((q[i] * q[i]).sum() + _LN_EPS)
            q[i] /= r[i]
    h = np.empty_like(q)
    lse, zy, zother = np.empty(b, q.dtype), np.empty(b, q.dtype), np.empty(b, q.dtype)
    _fused(q, U, targets, w, h, lse, zy, zother, chunk)
    if layernorm:
        for i in range(b):
            h[i] = (h[i] - q[i] * (q[i] * h[i]).sum()) / r[i]
    loss = 0.0
    for i in range(b):
        loss += w[i] * (lse[i] - zy[i])
    return loss, zy - zother, h, Eb


@njit(cache=True)
def _population(E, U, W, p, y, layernorm, chunk):
    N = E.shape[0]
    loss, margins, h, Eb = _forward_backward(E, U, W, np.arange(N), p.astype(E.dtype), y, layernorm, chunk)
    acc = 0.0
    for x in range(N):
        if margins[x] > 0:
            acc += p[x]
    return loss, acc, margins, Eb.T @ h


def population_metrics(E, onehot_col, onehot_scale, U, W, p, y, layernorm, chunk, margins, grad):
    loss, acc, m, g = _population(E, U, W, p, y, layernorm, _chunk(E.shape[0], U.shape[0], E.itemsize, chunk))
    if margins is not None:
        margins[...] = m
    if grad is not None:
        grad[...] = g
    return loss, acc


# --- sharpness (metrics.hpp) ------------------------------------------------------------

@njit(cache=True)
def _sharpness(E, U, W, p, y, iters, tol, seed):
    N, d = E.shape
    Q = E @ W
    Z = Q @ U.T
    S = np.empty_like(Z)
    for x in range(N):
        zmax = Z[x].max()
        e = np.exp(Z[x] - zmax)
        S[x] = e / e.sum()
    sbar = S @ U
    key = splitmix64(np.uint64(seed))
    flat = np.empty(d * d)
    for i in range(d * d):
        flat[i] = np.float64(splitmix64(key ^ splitmix64(np.uint64(i))) >> np.uint64(11)) * 2.0**-53 - 0.5
    v = flat.reshape((d, d)).astype(E.dtype)
    nrm = (v.astype(np.float64) ** 2).sum()
    lam = 0.0
    for _ in range(iters):
        v /= math.sqrt(nrm)
        D = (E @ v) @ U.T
        T = S * D
        t = T.sum(axis=1)
        Y = T @ U
        for x in range(N):
            Y[x] = p[x] * (Y[x] - t[x] * sbar[x])
        hv = E.T @ Y
        rq = (v.astype(np.float64) * hv).sum()
        nrm = (hv.astype(np.float64) ** 2).sum()
        converged = math.sqrt(max(nrm - rq * rq, 0.0)) <= tol * abs(rq)  # as metrics.hpp
        lam = rq
        if nrm == 0.0 or converged:
            break
        v = hv
    return lam


def sharpness(E, onehot_col, onehot_scale, U, W, p, y, chunk, iters, tol, seed):
    return float(_sharpness(E, U, W, p, y, iters, tol, np.uint64(seed)))


# --- the drivers (train.hpp) ----------------------------------------------------------------

@njit(cache=True)
def _batch(N, b, p, cdf, key, given, t, gt, slot):
    """Distinct tokens (first-appearance order) and weights count / b of step t; all N for b == 0."""
    if b == 0:
        return np.arange(N), p.copy()
    distinct = np.empty(b, dtype=np.int64)
    count = np.zeros(b)
    nd = 0
    for i in range(b):
        x = given[t, i] if given.shape[0] > 0 else draw(cdf, key, gt * b + i)
        if slot[x] < 0:
            slot[x] = nd
            distinct[nd] = x
            nd += 1
        count[slot[x]] += 1.0
    for j in range(nd):
        slot[distinct[j]] = -1
    return distinct[:nd].copy(), count[:nd] / b



# The parts of a run's context every representation reads (named tuples: numba reads them by
# field). A context is (problem, batches, optimizer, records, the representation's state).
_Problem = namedtuple("_Problem", "E U p y layernorm chunk")
_Batches = namedtuple("_Batches", "b cdf seed given start slot")
_Optimizer = namedtuple("_Optimizer", "kind lr momentum weight_decay beta1 beta2 eps schedule schedule_steps gamma "
                                      "min_lr")
# at: the steps to record; flags: which of loss, accuracy, margins, W, sharpness are asked
_Records = namedtuple("_Records", "at loss accuracy margins W sharpness flags power_iters seed")


@njit(cache=True, inline="always")
def _memory_batch(t, ctx):
    """Step t's distinct tokens, their weights (E's dtype) and the learning rate (the driver's)."""
    prob, batches, opt = ctx[0], ctx[1], ctx[2]
    gt = batches.start + t
    toks, w = _batch(prob.E.shape[0], batches.b, prob.p, batches.cdf, splitmix64(batches.seed), batches.given, t,
                     gt, batches.slot)
    lr = lr_at(opt.schedule, opt.lr, opt.schedule_steps, opt.gamma, opt.min_lr, gt)
    return toks, w.astype(prob.E.dtype), lr


@njit(cache=True, inline="always")
def _memory_due(t, r, ctx):
    """Whether record r is due at step t (TrainRecord::due; the driver's)."""
    rec = ctx[3]
    return r < len(rec.at) and rec.at[r] == t


@njit(cache=True, inline="always")
def _wants_scores(rec):
    return rec.flags[0] or rec.flags[1] or rec.flags[2]


@njit(cache=True, inline="always")
def _store_memory(r, W, prob, rec):
    """The W and sharpness records of record r."""
    if rec.flags[3]:
        rec.W[r] = W
    if rec.flags[4]:
        rec.sharpness[r] = _sharpness(prob.E, prob.U, W, prob.p, prob.y, rec.power_iters, SHARPNESS_TOL, rec.seed)


@njit(cache=True, inline="always")
def _primal_record(t, r, ctx):
    prob, batches, opt, rec, state = ctx
    W = state[0]
    diverged = False
    if _wants_scores(rec):
        loss, acc, margins, _ = _population(prob.E, prob.U, W, prob.p, prob.y, prob.layernorm, prob.chunk)
        rec.loss[r], rec.accuracy[r] = loss, acc
        if rec.flags[2]:
            rec.margins[r] = margins
        diverged = not np.isfinite(loss)
    _store_memory(r, W, prob, rec)
    return diverged


@njit(cache=True)
def _rank_update(W, Eb, h, alpha):
    """W += alpha * Eb^T h as b rank-one updates (loops: no temporaries). Row views make
    the inner loop a plain 1-D axpy that LLVM vectorises (2-D indexing did not: 2x slower)."""
    for i in range(W.shape[0]):
        wi = W[i]
        for j in range(Eb.shape[0]):
            a = W.dtype.type(alpha * Eb[j, i])
            hj = h[j]
            for k in range(wi.shape[0]):
                wi[k] += a * hj[k]


@njit(cache=True)
def _normalized_rank_update(W, Eb, h, lr, eps, decay, sign):
    """W <- decay W - lr s(Eb^T h), s(g) = g / (|g| + eps) or sign(g), a row of the gradient at a
    time (normalized_rank_update.hpp without the read-out): no d x d gradient, m or v pass."""
    g = np.empty(W.shape[1], dtype=W.dtype)
    lr, eps, decay = W.dtype.type(lr), W.dtype.type(eps), W.dtype.type(decay)
    for i in range(W.shape[0]):
        g[:] = 0
        for j in range(Eb.shape[0]):
            a = Eb[j, i]
            hj = h[j]
            for k in range(g.shape[0]):
                g[k] += a * hj[k]
        wi = W[i]
        for k in range(g.shape[0]):
            s = (1.0 if g[k] > 0 else (-1.0 if g[k] < 0 else 0.0)) if sign else g[k] / (abs(g[k]) + eps)
            wi[k] = decay * wi[k] - lr * s




# A minibatch step on a W beyond L2 (1 MiB or more) takes its update and the next batch's
# read-outs E[next] W in one pass over W, as the core does (train.hpp, train_models.hpp): W
# streams from memory once a step, not twice. The read-outs wait in the state for the next step.
_GROUP_ROWS = 64  # rows of W per group of such a pass: its threads' unit, fixed (results do not depend on threads)
_MAX_READ_AHEAD = 16  # as kMaxReadAhead in train_models.hpp


def _read_ahead_buffers(d, dtype):
    """(rows held, -1 for none; their tokens; E[tokens] W): a run's read-ahead, in its state."""
    return (np.full(1, -1, np.int64), np.empty(_MAX_READ_AHEAD, np.int64), np.empty((_MAX_READ_AHEAD, d), dtype))


@njit(cache=True, inline="always")
def _next_rows(t, ctx, steps, W):
    """The next batch's tokens where step t reads them ahead (none: an empty array)."""
    batches = ctx[1]
    if batches.b > 0 and W.size * W.itemsize >= (1 << 20) and t + 1 < steps:
        nxt, _, _ = _memory_batch(t + 1, ctx)
        if len(nxt) <= _MAX_READ_AHEAD:
            return nxt
    return np.empty(0, np.int64)


@njit(cache=True, inline="always")
def _take_read_ahead(held, held_toks, held_rows, toks):
    """The read-outs of toks kept by the step before (or None), and the buffer emptied."""
    got = None
    if held[0] == len(toks) and np.all(held_toks[:len(toks)] == toks):
        got = held_rows[:len(toks)]
    held[0] = -1
    return got


@njit(cache=True, inline="always")
def _group_parts(W, nxt):
    """Each row group's partial read-outs of E[nxt] W (groups x len(nxt) x d), summed by _keep_read_ahead."""
    return np.empty(((W.shape[0] + _GROUP_ROWS - 1) // _GROUP_ROWS, len(nxt), W.shape[1]), dtype=W.dtype)


@njit(cache=True, inline="always")
def _keep_read_ahead(held, held_toks, held_rows, nxt, part):
    """The next batch's read-outs: the sums of the groups of W in group order, whatever the threads."""
    if len(nxt):
        q = held_rows[:len(nxt)]
        q[:] = part[0]
        for grp in range(1, part.shape[0]):
            q += part[grp]
        held[0] = len(nxt)
        held_toks[:len(nxt)] = nxt


def _rank_pass_impl(W, EbT, H, alpha, E, nxt, part):
    """W += alpha Eb^T H in one pass over W, a row at a time, the batch rows four at a time (EbT:
    d x b, H: b x d; each element of W loaded for four multiply-adds), then the next batch's
    read-outs E[nxt] W gather row i while in cache (part[g]: the sums of row group g)."""
    d, b = W.shape[1], H.shape[0]
    for grp in prange(part.shape[0]):
        q = part[grp]
        q[:] = 0
        for i in range(grp * _GROUP_ROWS, min(W.shape[0], (grp + 1) * _GROUP_ROWS)):
            wi = W[i]
            for j in range(0, b - b % 4, 4):
                h0, h1, h2, h3 = H[j], H[j + 1], H[j + 2], H[j + 3]
                a0, a1 = W.dtype.type(alpha * EbT[i, j]), W.dtype.type(alpha * EbT[i, j + 1])
                a2, a3 = W.dtype.type(alpha * EbT[i, j + 2]), W.dtype.type(alpha * EbT[i, j + 3])
                for k in range(d):
                    wi[k] += a0 * h0[k] + a1 * h1[k] + a2 * h2[k] + a3 * h3[k]
            for j in range(b - b % 4, b):  # the last rows one at a time
                hj, a = H[j], W.dtype.type(alpha * EbT[i, j])
                for k in range(d):
                    wi[k] += a * hj[k]
            for n in range(len(nxt)):
                e, qn = E[nxt[n], i], q[n]
                for k in range(d):
                    qn[k] += e * wi[k]


_rank_pass_serial, _rank_pass_parallel = serial_and_parallel(_rank_pass_impl)


@njit(cache=True)
def _rank_pass(W, Eb, H, alpha, E, nxt):
    """W += alpha Eb^T H; returns the groups' partial read-outs of E[nxt] W (see _rank_pass_impl)."""
    EbT, part = np.ascontiguousarray(Eb.T), _group_parts(W, nxt)
    if Eb.shape[0] * W.size >= (1 << 18):
        _rank_pass_parallel(W, EbT, H, alpha, E, nxt, part)
    else:
        _rank_pass_serial(W, EbT, H, alpha, E, nxt, part)
    return part


@njit(cache=True, inline="always")
def _primal_step(t, toks, w, lr, ctx):
    prob, batches, opt, rec, state = ctx
    kind, mom, b1, b2, eps = opt.kind, opt.momentum, opt.beta1, opt.beta2, opt.eps
    W, m, v, opt_t, steps, held, held_toks, held_rows = state
    read_out = _take_read_ahead(held, held_toks, held_rows, toks)
    loss, _, h, Eb = _forward_backward(prob.E, prob.U, W, toks, w, prob.y[toks], prob.layernorm, prob.chunk,
                                       read_out)
    if not np.isfinite(loss):
        return False
    opt_t[0] += 1
    decay = 1.0 - lr * opt.weight_decay
    if kind == 0 and mom == 0.0 and opt.weight_decay == 0.0:
        nxt = _next_rows(t, ctx, steps, W)
        if len(nxt) or (Eb.shape[0] <= _MAX_READ_AHEAD and W.size * W.itemsize >= (1 << 20)):
            _keep_read_ahead(held, held_toks, held_rows, nxt, _rank_pass(W, Eb, h, -lr, prob.E, nxt))
        elif Eb.shape[0] * W.size <= (1 << 20):
            _rank_update(W, Eb, h, -lr)  # a few rows: no d x d gradient buffer
        else:
            W -= W.dtype.type(lr) * (Eb.T @ h)  # many rows: BLAS
    elif (kind == 1 and b1 == 0.0 and b2 == 0.0) or kind == 2:
        _normalized_rank_update(W, Eb, h, lr, eps, decay, kind == 2)
    else:
        optimizer_step(kind, W, Eb.T @ h, m, v, lr, decay, mom, b1, b2, eps, opt_t[0])
    return True


_drive_primal = driver("primal", _primal_record, _primal_step, _memory_due, _memory_batch)


def _context(E, U, p, y, cdf, tokens, opt, tp, rec):
    """(problem, batches, optimizer, records) of a run. Unrequested records get (small) scratch
    buffers so that one compiled signature serves all."""
    N, dt = E.shape[0], E.dtype
    R = len(rec.at)
    flags = np.array([getattr(rec, k) is not None for k in ("loss", "accuracy", "margins", "W", "sharpness")])
    bufs = tuple(getattr(rec, k) if getattr(rec, k) is not None else np.empty(shape, dtype=dt)
                 for k, shape in (("loss", (R,)), ("accuracy", (R,)), ("margins", (0, 0)), ("W", (0, 0, 0)),
                                  ("sharpness", (0,))))
    records = _Records(np.asarray(rec.at, dtype=np.int64), *bufs, flags, int(tp.power_iters), np.uint64(tp.seed))
    given = tokens if tokens is not None else np.empty((0, 1), dtype=np.int64)
    batches = _Batches(int(tp.batch_size), cdf if cdf is not None else np.ones(1), np.uint64(tp.seed), given,
                       int(tp.start_step), np.full(N, -1, dtype=np.int64))
    chunk = _chunk(N, U.shape[0], E.itemsize, tp.chunk)
    optimizer = _Optimizer(int(opt.kind), float(opt.lr), float(opt.momentum), float(opt.weight_decay),
                           float(opt.beta1), float(opt.beta2), float(opt.eps), int(opt.schedule),
                           int(opt.schedule_steps), float(opt.gamma), float(opt.min_lr))
    return _Problem(E, U, p, y, bool(tp.layernorm), chunk), batches, optimizer, records


def _progress(result):
    """(steps done, records written) of a loop's (status, done, records)."""
    return int(result[1]), int(result[2])


def train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    d, dt = E.shape[1], E.dtype
    m_ = m if m is not None else np.zeros((d, d), dtype=dt)
    v_ = v if v is not None else np.zeros((d, d), dtype=dt)
    opt_t = np.array([t0], dtype=np.int64)
    ctx = (*_context(E, U, p, y, cdf, tokens, opt, tp, rec),
           (W, m_, v_, opt_t, int(tp.steps), *_read_ahead_buffers(d, dt)))
    with np.errstate(over="ignore", invalid="ignore"):
        status, done, r = interruptible(_drive_primal, tp.steps, ctx, progress=_progress)
    return int(status), int(done), int(r), int(opt_t[0])


# --- the dual engine (dual_step.hpp) --------------------------------------------------------

@njit(cache=True)
def _residual(Z, y, toks, w):
    """Rows toks of the scores Z: the loss sum_i w_i l_i, the margins and dL/dz (b x M), the
    softmax in double as the core's; probabilities that underflow the dtype are exactly 0 (the
    core flushes denormals: they made the products that follow many times slower)."""
    b, M = len(toks), Z.shape[1]
    G = np.empty((b, M), dtype=Z.dtype)
    margins = np.empty(b, dtype=Z.dtype)
    tiny = np.finfo(Z.dtype).tiny
    loss = 0.0
    for i in range(b):
        z, yx = Z[toks[i]], y[toks[i]]
        zmax, zo = -np.inf, -np.inf
        for k in range(M):
            zmax = max(zmax, z[k])
            if k != yx:
                zo = max(zo, z[k])
        tot = 0.0
        for k in range(M):
            tot += math.exp(np.float64(z[k]) - zmax)
        lse = zmax + math.log(tot)
        loss += w[i] * (lse - z[yx])
        margins[i] = z[yx] - zo
        for k in range(M):
            g = w[i] * _exp_nonpositive(np.float64(z[k]) - lse)
            G[i, k] = g if g >= tiny else 0.0
        G[i, yx] -= w[i]
    return loss, margins, G


@njit(cache=True, inline="always")
def _store_scores(r, loss, margins, p, rec):
    """Record r of a run kept in score space: loss, accuracy, margins; True if the loss is not finite."""
    acc = 0.0
    for x in range(len(margins)):
        if margins[x] > 0:
            acc += p[x]
    rec.loss[r], rec.accuracy[r] = loss, acc
    if rec.flags[2]:
        rec.margins[r] = margins
    return not np.isfinite(loss)


@njit(cache=True)
def _readout_residual(Q, U, y, toks, w, chunk):
    """The LayerNorm model's residual on read-outs Q (N x d): loss, margins, dL/dQ rows."""
    Qb = np.ascontiguousarray(Q[toks])
    b = Qb.shape[0]
    r = np.empty(b, dtype=Qb.dtype)
    for i in range(b):
        r[i] = math.sqrt((Qb[i] * Qb[i]).sum() + _LN_EPS)
        Qb[i] /= r[i]
    h = np.empty_like(Qb)
    lse, zy, zother = np.empty(b, Qb.dtype), np.empty(b, Qb.dtype), np.empty(b, Qb.dtype)
    _fused(Qb, U, y[toks], w, h, lse, zy, zother, chunk)
    loss = 0.0
    for i in range(b):
        h[i] = (h[i] - Qb[i] * (Qb[i] * h[i]).sum()) / r[i]
        loss += w[i] * (lse[i] - zy[i])
    return loss, zy - zother, h


@njit(cache=True)
def _dual_residual(readout, Z, U, y, toks, w, chunk):
    if readout:
        return _readout_residual(Z, U, y, toks, w, chunk)
    return _residual(Z, y, toks, w)


@njit(cache=True)
def _dual_setup(E, U, W0, Z, A, mA, mZ, c, fresh, readout):
    """The Gram matrices K_E, K_U (the identity for read-outs); a fresh run starts from W0."""
    KE = E @ E.T
    KU = np.eye(E.shape[1], dtype=E.dtype) if readout else U @ U.T
    if fresh:
        Z[:] = E @ W0 if readout else (E @ W0) @ U.T
        A[:] = 0
        mA[:] = 0
        mZ[:] = 0
        c[0] = 1.0
    return KE, KU


@njit(cache=True, inline="always")
def _dual_record(t, r, ctx):
    prob, batches, opt, rec, state = ctx
    E, U, ln = prob.E, prob.U, prob.layernorm
    W0, Z, A, mA, mZ, c, KE, KU, pw = state
    diverged = False
    if _wants_scores(rec):
        loss, margins, _ = _dual_residual(ln, Z, U, prob.y, np.arange(E.shape[0]), pw, prob.chunk)
        diverged = _store_scores(r, loss, margins, prob.p, rec)
    if rec.flags[3] or rec.flags[4]:
        _store_memory(r, (c[0] * W0 - E.T @ (A if ln else A @ U)).astype(E.dtype), prob, rec)
    return diverged


@njit(cache=True, inline="always")
def _dual_step(t, toks, w, lr, ctx):
    prob, batches, opt, rec, state = ctx
    mom = opt.momentum
    W0, Z, A, mA, mZ, c, KE, KU, pw = state
    loss, _, G = _dual_residual(prob.layernorm, Z, prob.U, prob.y, toks, w, prob.chunk)
    if not np.isfinite(loss):
        return False
    GK = G @ KU
    decay = 1.0 - lr * opt.weight_decay
    if decay != 1.0:
        Z *= decay
        A *= decay
        c[0] *= decay
    KEb = np.ascontiguousarray(KE[toks])  # K_E symmetric: its columns x_b are its rows
    if mom != 0.0:
        mA *= mom
        mZ *= mom
        for i in range(len(toks)):
            mA[toks[i]] += G[i]
        mZ += KEb.T @ GK
        Z -= lr * mZ
        A += lr * mA
    else:
        Z -= lr * (KEb.T @ GK)
        for i in range(len(toks)):
            A[toks[i]] += lr * G[i]
    return True


_drive_dual = driver("dual", _dual_record, _dual_step, _memory_due, _memory_batch)


def train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    mA_ = mA if mA is not None else np.zeros_like(Z)
    mZ_ = mZ if mZ is not None else np.zeros_like(Z)
    c_ = np.array([c], dtype=np.float64)
    KE, KU = _dual_setup(E, U, W0, Z, A, mA_, mZ_, c_, fresh, bool(tp.layernorm))
    state = (W0, Z, A, mA_, mZ_, c_, KE, KU, p.astype(E.dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        status, done, r = interruptible(_drive_dual, tp.steps, (*_context(E, U, p, y, cdf, tokens, opt, tp, rec), state),
                                        progress=lambda result: (*_progress(result), float(c_[0])))
    return int(status), int(done), int(r), float(c_[0])


def dual_rebuild_W(E, onehot_col, onehot_scale, U, W0, A, c, W_out):
    W_out[...] = W0.dtype.type(c) * W0 - E.T @ (A if U is None else A @ U)


def sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out):
    w = np.full(len(x), 1.0 / len(x), dtype=E.dtype)
    chunk = _chunk(len(x), U.shape[0], E.itemsize, 0)
    loss, _, h, Eb = _forward_backward(E, U, np.ascontiguousarray(W), x, w, y, layernorm, chunk)
    out[...] = W - W.dtype.type(lr) * (Eb.T @ h)
    return float(loss)


@njit(cache=True, inline="always")
def _many_record(t, r, ctx):
    """Every step of a run of many: its population loss and accuracy (kept in out), and the
    gradient G the next step takes (not after the last)."""
    E, U, W, p, y, lr, steps, chunk, G, out = ctx
    loss, acc, _, g = _population(E, U, W, p, y, False, chunk)
    out[0], out[1] = loss, acc
    if not np.isfinite(loss):
        return r, True
    if t < steps:
        G[:] = g
    return r, False


@njit(cache=True, inline="always")
def _many_step(t, ctx):
    E, U, W, p, y, lr, steps, chunk, G, out = ctx
    W -= lr * G
    return True


_drive_many = driver("many", _many_record, _many_step)


# Serial over runs: a prange here ran the per-run BLAS calls inside numba's threads and was
# 30x slower than this loop on 2 cores.
@njit(cache=True, nogil=True)
def _train_many(E, U, W, p, y, lr, steps, loss, accuracy, status, chunk, stop):
    G = np.empty_like(W[0])
    out = np.zeros(2)
    for r in range(E.shape[0]):
        Wr = W[r].copy()
        st, _, _ = _drive_many(steps, (E[r], U[r], Wr, p[r], y[r], E.dtype.type(lr[r]), steps, chunk, G, out), stop)
        W[r] = Wr
        loss[r], accuracy[r], status[r] = out[0], out[1], st


def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    interruptible(_train_many, E, U, W, p, y, lr, steps, loss, accuracy, status,
                  _chunk(E.shape[1], U.shape[1], E.itemsize, 0), progress=lambda res: (0, 0))


@njit(cache=True, inline="always")
def _projected_record(t, r, ctx):
    prob, batches, opt, rec, state = ctx
    V, pw = state
    diverged = False
    if _wants_scores(rec):
        loss, margins, _ = _residual(prob.E @ V, prob.y, np.arange(prob.E.shape[0]), pw)
        diverged = _store_scores(r, loss, margins, prob.p, rec)
    return diverged


@njit(cache=True, inline="always")
def _projected_step(t, toks, w, lr, ctx):
    prob, batches, opt, rec, state = ctx
    U, sign, eps = prob.U, opt.kind == 2, opt.eps
    V, pw = state
    Eb = np.ascontiguousarray(prob.E[toks])
    loss, _, G = _residual(Eb @ V, prob.y[toks], np.arange(len(toks)), w)
    if not np.isfinite(loss):
        return False
    S = (Eb.T @ G) @ U  # the W gradient, d x d
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            g = S[i, j]
            S[i, j] = (1.0 if g > 0 else (-1.0 if g < 0 else 0.0)) if sign else g / (abs(g) + eps)
    V[:] = V.dtype.type(1.0 - lr * opt.weight_decay) * V - V.dtype.type(lr) * (S @ U.T)
    return True


_drive_projected = driver("projected", _projected_record, _projected_step, _memory_due, _memory_batch)


def train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec):
    ctx = (*_context(E, U, p, y, cdf, tokens, opt, tp, rec), (V, p.astype(E.dtype)))
    with np.errstate(over="ignore", invalid="ignore"):
        out = interruptible(_drive_projected, tp.steps, ctx, progress=_progress)
    return tuple(int(o) for o in out)


# --- the learnable and exponential models (train_models.hpp) ----------------------------------

@njit(cache=True)
def _model_forward(kind, E, U, W, toks, w, y, layernorm, read_out=None):
    """model_pass without gradients' second half: the batch rows Eb, read-outs H (after
    LayerNorm), their norms r, and per row the loss terms, margins and dL/dz (b x M).
    read_out: the learnable model's E[toks] W when already taken (b x d), else None."""
    Eb = np.ascontiguousarray(E[toks])
    if kind != 1:
        H = np.maximum(Eb, Eb.dtype.type(0))
    elif read_out is None:
        H = Eb @ W
    else:
        H = read_out.copy()
    b = H.shape[0]
    r = np.ones(b, dtype=H.dtype)
    if layernorm:
        for i in range(b):
            r[i] = math.sqrt((H[i] * H[i]).sum() + _LN_EPS)
            H[i] /= r[i]
    loss, margins, G = _residual(H @ U.T, y[toks], np.arange(b), w)
    return loss, margins, G, Eb, H, r


@njit(cache=True, inline="always")
def _model_step_value(param, grad, lr, eps, normalized):
    return param - lr * (grad / (abs(grad) + eps) if normalized else grad)


# error_model "numpy": a division by zero gives inf (|g| + eps > 0 here anyway) instead of
# numba's check of every divisor, which kept the division loops from vectorising (2.5x)
@njit(cache=True, error_model="numpy")
def _model_update(P, rows, G, lr, eps, normalized):
    """P[rows[i]] <- P[rows[i]] - lr u(G[i]) (u: identity for SGD, g / (|g| + eps) for
    Adam(0, 0)); rows distinct, or None for every row of P in order."""
    lr, eps = P.dtype.type(lr), P.dtype.type(eps)
    for i in range(G.shape[0]):
        pi, gi = P[i if rows is None else rows[i]], G[i]
        for k in range(pi.shape[0]):
            pi[k] = _model_step_value(pi[k], gi[k], lr, eps, normalized)


def _learnable_W_pass_impl(W, EbT, dH, lr, eps, normalized, E, toks, lr_E, nxt, part):
    """The learnable model's W step in one pass over W (learnable_W_pass in train_models.hpp):
    for each row i of W, dE[:, i] = dH W[i]^T (W before its update) and E's batch rows take
    their step in column i, W[i] <- W[i] - lr u(E_b[:, i]^T dH) (no d x d gradient), then the
    next batch's read-outs E[nxt] W gather row i while in cache (part[g], as _rank_pass_impl).
    The batch rows go four at a time (EbT: d x b, dH: b x d), each element of W loaded serving
    eight multiply-adds."""
    d, b = W.shape[1], dH.shape[0]
    lr, eps, lr_E = W.dtype.type(lr), W.dtype.type(eps), W.dtype.type(lr_E)
    for grp in prange(part.shape[0]):
        q = part[grp]
        q[:] = 0
        g = np.zeros(d, dtype=W.dtype)
        for i in range(grp * _GROUP_ROWS, min(W.shape[0], (grp + 1) * _GROUP_ROWS)):
            wi = W[i]
            g[:] = 0
            for j in range(0, b - b % 4, 4):
                h0, h1, h2, h3 = dH[j], dH[j + 1], dH[j + 2], dH[j + 3]
                a0, a1, a2, a3 = EbT[i, j], EbT[i, j + 1], EbT[i, j + 2], EbT[i, j + 3]
                s0 = s1 = s2 = s3 = W.dtype.type(0.0)
                for k in range(d):
                    w = wi[k]
                    g[k] += a0 * h0[k] + a1 * h1[k] + a2 * h2[k] + a3 * h3[k]
                    s0 += h0[k] * w
                    s1 += h1[k] * w
                    s2 += h2[k] * w
                    s3 += h3[k] * w
                s = (s0, s1, s2, s3)
                for jj in range(4):  # E's batch rows, column i: nothing reads it until below
                    E[toks[j + jj], i] = _model_step_value(E[toks[j + jj], i], s[jj], lr_E, eps, normalized)
            for j in range(b - b % 4, b):  # the last rows one at a time
                hj, a = dH[j], EbT[i, j]
                s0 = W.dtype.type(0.0)
                for k in range(d):
                    g[k] += a * hj[k]
                    s0 += hj[k] * wi[k]
                E[toks[j], i] = _model_step_value(E[toks[j], i], s0, lr_E, eps, normalized)
            for k in range(d):
                wi[k] = _model_step_value(wi[k], g[k], lr, eps, normalized)
            for n in range(len(nxt)):
                e, qn = E[nxt[n], i], q[n]
                for k in range(d):
                    qn[k] += e * wi[k]


# reassoc: the dot products of dE vectorise (as the core's vector partial sums); no other
# fast-math flag, so that NaN and Inf still reach the loss that detects divergence. Compiled
# twice, as _fused: threads pay off on a large W only.
_learnable_W_serial, _learnable_W_parallel = serial_and_parallel(_learnable_W_pass_impl, fastmath={"reassoc"},
                                                                 error_model="numpy")


@njit(cache=True)
def _learnable_W_pass(W, Eb, dH, lr, eps, normalized, E, toks, lr_E, nxt):
    """W's step and E's batch rows' (see _learnable_W_pass_impl); returns the groups' partial
    read-outs of E[nxt] W after them."""
    EbT, part = np.ascontiguousarray(Eb.T), _group_parts(W, nxt)
    if Eb.shape[0] * W.size >= (1 << 18):
        _learnable_W_parallel(W, EbT, dH, lr, eps, normalized, E, toks, lr_E, nxt, part)
    else:
        _learnable_W_serial(W, EbT, dH, lr, eps, normalized, E, toks, lr_E, nxt, part)
    return part


@njit(cache=True, inline="always")
def _model_record(t, r, ctx):
    prob, batches, opt, rec, state = ctx
    kind, W, pw = state[0], state[1], state[5]
    diverged = False
    if _wants_scores(rec):
        loss, margins, _, _, _, _ = _model_forward(kind, prob.E, prob.U, W, np.arange(prob.E.shape[0]), pw, prob.y,
                                                   prob.layernorm)
        diverged = _store_scores(r, loss, margins, prob.p, rec)
    if rec.flags[3] and kind == 1:
        rec.W[r] = W
    return diverged


@njit(cache=True, inline="always")
def _model_step(t, toks, w, lr, ctx):
    """One step of train_model (train_models.hpp): U, then W and dE from W before its update
    with E's batch rows (distinct: the batch merges duplicate draws). A learnable minibatch
    step with W of 1 MiB or more also reads the next batch's rows out of W in its W pass (W
    streams from memory once a step, not twice), kept in the state for the next step."""
    prob, batches, opt, rec, state = ctx
    kind, W, lr_E, lr_U, normalized, _, steps, held, held_toks, held_rows = state
    E, U, eps = prob.E, prob.U, opt.eps
    read_out = _take_read_ahead(held, held_toks, held_rows, toks)
    loss, _, G, Eb, H, r = _model_forward(kind, E, U, W, toks, w, prob.y, prob.layernorm, read_out)
    if not np.isfinite(loss):
        return False
    dU = G.T @ H
    dH = G @ U  # with U before its update
    if prob.layernorm:
        for i in range(dH.shape[0]):
            dH[i] = (dH[i] - H[i] * (H[i] * dH[i]).sum()) / r[i]
    _model_update(U, None, dU, lr_U, eps, normalized)
    if kind == 1:
        nxt = _next_rows(t, ctx, steps, W)
        _keep_read_ahead(held, held_toks, held_rows, nxt,
                         _learnable_W_pass(W, Eb, dH, lr, eps, normalized, E, toks, lr_E, nxt))
    else:
        for i in range(dH.shape[0]):
            for k in range(dH.shape[1]):
                if Eb[i, k] <= 0:
                    dH[i, k] = 0
        _model_update(E, toks, dH, lr_E, eps, normalized)
    return True


_drive_model = driver("model", _model_record, _model_step, _memory_due, _memory_batch)


def train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    learnable = int(kind) == 1
    W_ = W if learnable else np.zeros((1, 1), dtype=E.dtype)
    state = (int(kind), W_, float(opt.lr_E), float(opt.lr_U), bool(opt.normalized), p.astype(E.dtype),
             int(tp.steps), *_read_ahead_buffers(W_.shape[1], E.dtype))
    ctx = (*_context(E, U, p, y, cdf, tokens, opt.opt, tp, rec), state)
    with np.errstate(over="ignore", invalid="ignore"):
        out = interruptible(_drive_model, tp.steps, ctx, progress=_progress)
    return tuple(int(o) for o in out)
