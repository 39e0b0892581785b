"""The numba CPU backend: the kernels of csrc/include/fastmem as @njit loops (parallel over
rows where it pays), used when the compiled extension is missing or when asked for.

Same algorithms and semantics as the C++ core (streamed online softmax, merged duplicate
draws, the counter-based sampler, one training loop under every representation as drive(),
CMD's P-wide passes); the one-hot row path of the C++ core is not specialised here (dense E
gives the same result).
"""

import math
import types
from collections import namedtuple

import numba as nb
import numpy as np
from numba import njit, prange

INFO = {"numba": nb.__version__, "threads": nb.get_num_threads()}
# kernels of the signature table this backend does not run, and why (the registry reports them
# in fm.backends() and raises BackendUnavailableError naming them; nothing runs them elsewhere)
LACKS = {"train_model": "the learnable and exponential models are not jitted for numba (cpp and numpy run them)"}

from ..specs import LAYERNORM_EPS as _LN_EPS
from ..specs import SHARPNESS_TOL
_BUDGET = 16 << 20  # bytes of a streamed score block, as default_chunk() in softmax_xent_grad.hpp


# --- sampling (rng.hpp) -------------------------------------------------------------

@njit(cache=True)
def _splitmix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _draw(cdf, key, counter):
    u = np.float64(_splitmix64(key ^ _splitmix64(np.uint64(counter))) >> np.uint64(11)) * 2.0**-53
    k = np.searchsorted(cdf, u, side="right")
    return min(k, len(cdf) - 1)


@njit(cache=True)
def _sample_into(cdf, seed, start_step, out):
    key = _splitmix64(np.uint64(seed))
    b = out.shape[1]
    for t in range(out.shape[0]):
        for i in range(b):
            out[t, i] = _draw(cdf, key, (start_step + t) * b + i)


def sample_tokens(cdf, seed, start_step, out):
    _sample_into(cdf, np.uint64(seed), start_step, out)


_NORMAL_STREAM = np.uint64(0x4E4F524D414C5354)  # normal.hpp's kNormalStream


@njit(cache=True)
def _normal_into(seed, scale, flat):
    key = _splitmix64(np.uint64(seed) ^ _NORMAL_STREAM)
    for i in range(flat.size):
        k, l = i // 16, i % 16
        w = _splitmix64(key ^ _splitmix64(np.uint64(8 * k + l % 8)))
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
_fused_serial = njit(cache=True)(_fused_impl)
_fused_parallel = njit(cache=True, parallel=True)(_fused_impl)


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
def _forward_backward(E, U, W, tokens, w, targets, layernorm, chunk):
    """(loss, zy - zother, dL/dQ, E[tokens]); tokens: row ids; targets: per-row targets."""
    Eb = np.ascontiguousarray(E[tokens])
    q = Eb @ W
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
    key = _splitmix64(np.uint64(seed))
    flat = np.empty(d * d)
    for i in range(d * d):
        flat[i] = np.float64(_splitmix64(key ^ _splitmix64(np.uint64(i))) >> np.uint64(11)) * 2.0**-53 - 0.5
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
def _lr_at(sched, lr, steps_, gamma, min_lr, t):
    if sched == 1:
        frac = min(t / steps_, 1.0) if steps_ > 0 else 0.0
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    if sched == 2:
        return lr * gamma ** (t // steps_ if steps_ > 0 else 0)
    return lr


@njit(cache=True)
def _batch(N, b, p, cdf, key, given, t, gt, slot):
    """Distinct tokens (first-appearance order) and weights count / b of step t; all N for b == 0."""
    if b == 0:
        return np.arange(N), p.copy()
    distinct = np.empty(b, dtype=np.int64)
    count = np.zeros(b)
    nd = 0
    for i in range(b):
        x = given[t, i] if given.shape[0] > 0 else _draw(cdf, key, gt * b + i)
        if slot[x] < 0:
            slot[x] = nd
            distinct[nd] = x
            nd += 1
        count[slot[x]] += 1.0
    for j in range(nd):
        slot[distinct[j]] = -1
    return distinct[:nd].copy(), count[:nd] / b


# --- the one loop (drive() in train.hpp) ---------------------------------------------------

def _drive_loop(steps, ctx):
    """drive() in train.hpp: record at t, then take step t, until `steps` or divergence.
    record(t, r, ctx) writes the records due at t from record r on and returns (next r,
    diverged); step(t, ctx) returns False when the loss turned non-finite."""
    r, status, done = 0, 0, 0
    for t in range(steps + 1):
        r, diverged = record(t, r, ctx)  # noqa: F821 (bound per representation by _driver)
        done = t
        if diverged:
            status = 1
        if t == steps or status != 0:
            break
        if not step(t, ctx):  # noqa: F821
            status = 1
            break
    return status, done, r


def _driver(name, record, step):
    """_drive_loop compiled for one representation, its record and step bound as the loop's
    globals (and inlined into it: they take the whole context, which a call would pass by value).
    numba cannot cache a function that takes another as an argument (a dynamic global) nor a
    closure over one (the cache key pickles the dispatcher with a per-process id), so each
    representation gets its own compiled copy of the one loop's code."""
    f = types.FunctionType(_drive_loop.__code__, {"record": record, "step": step, "range": range, "__name__": __name__},
                           "_drive_" + name)
    f.__qualname__ = f.__name__
    return njit(cache=True)(f)


# The parts of a run's context every representation reads (named tuples: numba reads them by
# field). A context is (problem, batches, optimizer, records, the representation's state).
_Problem = namedtuple("_Problem", "E U p y layernorm chunk")
_Batches = namedtuple("_Batches", "b cdf seed given start slot")
_Optimizer = namedtuple("_Optimizer", "kind lr momentum weight_decay beta1 beta2 eps schedule schedule_steps gamma "
                                      "min_lr")
# at: the steps to record; flags: which of loss, accuracy, margins, W, sharpness are asked
_Records = namedtuple("_Records", "at loss accuracy margins W sharpness flags power_iters seed")


@njit(cache=True, inline="always")
def _step_batch(t, prob, batches, opt):
    """Step t's distinct tokens, their weights (E's dtype) and the learning rate."""
    gt = batches.start + t
    toks, w = _batch(prob.E.shape[0], batches.b, prob.p, batches.cdf, _splitmix64(batches.seed), batches.given, t,
                     gt, batches.slot)
    lr = _lr_at(opt.schedule, opt.lr, opt.schedule_steps, opt.gamma, opt.min_lr, gt)
    return toks, w.astype(prob.E.dtype), lr


@njit(cache=True, inline="always")
def _due(rec, r, t):
    """Whether record r is due at step t (TrainRecord::due)."""
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
    while _due(rec, r, t):
        if _wants_scores(rec):
            loss, acc, margins, _ = _population(prob.E, prob.U, W, prob.p, prob.y, prob.layernorm, prob.chunk)
            rec.loss[r], rec.accuracy[r] = loss, acc
            if rec.flags[2]:
                rec.margins[r] = margins
            if not np.isfinite(loss):
                diverged = True
        _store_memory(r, W, prob, rec)
        r += 1
    return r, diverged


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


@njit(cache=True)
def _optimizer_step(kind, W, g, m, v, lr, decay, mom, b1, b2, eps, t):
    """optim.hpp's update of W from a dense gradient g, in place."""
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    for i in range(W.shape[0]):
        for k in range(W.shape[1]):
            gi = g[i, k]
            if kind == 0:
                if mom != 0.0:
                    m[i, k] = mom * m[i, k] + gi
                    gi = m[i, k]
                W[i, k] = decay * W[i, k] - lr * gi
            elif kind == 1:
                m[i, k] = b1 * m[i, k] + (1 - b1) * gi
                v[i, k] = b2 * v[i, k] + (1 - b2) * gi * gi
                W[i, k] = decay * W[i, k] - (lr / bc1) * m[i, k] / (math.sqrt(v[i, k]) / math.sqrt(bc2) + eps)
            else:
                W[i, k] = decay * W[i, k] - lr * (1.0 if gi > 0 else (-1.0 if gi < 0 else 0.0))


@njit(cache=True, inline="always")
def _primal_step(t, ctx):
    prob, batches, opt, rec, state = ctx
    kind, mom, b1, b2, eps = opt.kind, opt.momentum, opt.beta1, opt.beta2, opt.eps
    W, m, v, opt_t = state
    toks, w, lr = _step_batch(t, prob, batches, opt)
    loss, _, h, Eb = _forward_backward(prob.E, prob.U, W, toks, w, prob.y[toks], prob.layernorm, prob.chunk)
    if not np.isfinite(loss):
        return False
    opt_t[0] += 1
    decay = 1.0 - lr * opt.weight_decay
    if kind == 0 and mom == 0.0 and opt.weight_decay == 0.0:
        if Eb.shape[0] * W.size <= (1 << 20):
            _rank_update(W, Eb, h, -lr)  # a few rows: no d x d gradient buffer
        else:
            W -= W.dtype.type(lr) * (Eb.T @ h)  # many rows: BLAS
    elif (kind == 1 and b1 == 0.0 and b2 == 0.0) or kind == 2:
        _normalized_rank_update(W, Eb, h, lr, eps, decay, kind == 2)
    else:
        _optimizer_step(kind, W, Eb.T @ h, m, v, lr, decay, mom, b1, b2, eps, opt_t[0])
    return True


_drive_primal = _driver("primal", _primal_record, _primal_step)


def _context(E, U, p, y, cdf, tokens, opt, tp, rec):
    """(problem, batches, optimizer, records) of a run. Unrequested records get (small) scratch
    buffers so that one compiled signature serves all."""
    N, d, dt = E.shape[0], E.shape[1], E.dtype
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


def train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    d, dt = E.shape[1], E.dtype
    m_ = m if m is not None else np.zeros((d, d), dtype=dt)
    v_ = v if v is not None else np.zeros((d, d), dtype=dt)
    opt_t = np.array([t0], dtype=np.int64)
    ctx = (*_context(E, U, p, y, cdf, tokens, opt, tp, rec), (W, m_, v_, opt_t))
    with np.errstate(over="ignore", invalid="ignore"):
        status, done, r = _drive_primal(tp.steps, ctx)
    return int(status), int(done), int(r), int(opt_t[0])


# --- the dual engine (dual_step.hpp) --------------------------------------------------------

@njit(cache=True)
def _residual(Z, y, toks, w):
    b, M = len(toks), Z.shape[1]
    G = np.empty((b, M), dtype=Z.dtype)
    margins = np.empty(b, dtype=Z.dtype)
    loss = 0.0
    for i in range(b):
        z = Z[toks[i]]
        yx = y[toks[i]]
        zmax = z.max()
        zo = -np.inf
        for k in range(M):
            if k != yx and z[k] > zo:
                zo = z[k]
        lse = zmax + math.log(np.exp(z - zmax).sum())
        loss += w[i] * (lse - z[yx])
        margins[i] = z[yx] - zo
        G[i] = w[i] * np.exp(z - lse)
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
    while _due(rec, r, t):
        if _wants_scores(rec):
            loss, margins, _ = _dual_residual(ln, Z, U, prob.y, np.arange(E.shape[0]), pw, prob.chunk)
            diverged |= _store_scores(r, loss, margins, prob.p, rec)
        if rec.flags[3] or rec.flags[4]:
            _store_memory(r, (c[0] * W0 - E.T @ (A if ln else A @ U)).astype(E.dtype), prob, rec)
        r += 1
    return r, diverged


@njit(cache=True, inline="always")
def _dual_step(t, ctx):
    prob, batches, opt, rec, state = ctx
    mom = opt.momentum
    W0, Z, A, mA, mZ, c, KE, KU, pw = state
    toks, w, lr = _step_batch(t, prob, batches, opt)
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


_drive_dual = _driver("dual", _dual_record, _dual_step)


def train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    mA_ = mA if mA is not None else np.zeros_like(Z)
    mZ_ = mZ if mZ is not None else np.zeros_like(Z)
    c_ = np.array([c], dtype=np.float64)
    KE, KU = _dual_setup(E, U, W0, Z, A, mA_, mZ_, c_, fresh, bool(tp.layernorm))
    state = (W0, Z, A, mA_, mZ_, c_, KE, KU, p.astype(E.dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        status, done, r = _drive_dual(tp.steps, (*_context(E, U, p, y, cdf, tokens, opt, tp, rec), state))
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


_drive_many = _driver("many", _many_record, _many_step)


# Serial over runs: a prange here ran the per-run BLAS calls inside numba's threads and was
# 30x slower than this loop on 2 cores.
@njit(cache=True)
def _train_many(E, U, W, p, y, lr, steps, loss, accuracy, status, chunk):
    G = np.empty_like(W[0])
    out = np.zeros(2)
    for r in range(E.shape[0]):
        Wr = W[r].copy()
        st, _, _ = _drive_many(steps, (E[r], U[r], Wr, p[r], y[r], E.dtype.type(lr[r]), steps, chunk, G, out))
        W[r] = Wr
        loss[r], accuracy[r], status[r] = out[0], out[1], st


def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    _train_many(E, U, W, p, y, lr, steps, loss, accuracy, status, _chunk(E.shape[1], U.shape[1], E.itemsize, 0))


@njit(cache=True, inline="always")
def _projected_record(t, r, ctx):
    prob, batches, opt, rec, state = ctx
    V, pw = state
    diverged = False
    while _due(rec, r, t):
        if _wants_scores(rec):
            loss, margins, _ = _residual(prob.E @ V, prob.y, np.arange(prob.E.shape[0]), pw)
            diverged |= _store_scores(r, loss, margins, prob.p, rec)
        r += 1
    return r, diverged


@njit(cache=True, inline="always")
def _projected_step(t, ctx):
    prob, batches, opt, rec, state = ctx
    U, sign, eps = prob.U, opt.kind == 2, opt.eps
    V, pw = state
    toks, w, lr = _step_batch(t, prob, batches, opt)
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


_drive_projected = _driver("projected", _projected_record, _projected_step)


def train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec):
    ctx = (*_context(E, U, p, y, cdf, tokens, opt, tp, rec), (V, p.astype(E.dtype)))
    with np.errstate(over="ignore", invalid="ignore"):
        out = _drive_projected(tp.steps, ctx)
    return tuple(int(o) for o in out)


# --- CMD (cmd.hpp) ----------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _cmd_assign_fit(theta, refs, mode, a, b, corr):
    T, P = theta.shape
    M = refs.shape[1]
    rmean = np.zeros(M)
    for m in range(M):
        rmean[m] = refs[:, m].mean()
    rc = refs - rmean
    rn2 = (rc * rc).sum(axis=0)
    for i in prange(P):
        mean = 0.0
        for t in range(T):
            mean += theta[t, i]
        mean /= T
        ss = 0.0
        dot = np.zeros(M)
        for t in range(T):
            xv = theta[t, i] - mean
            ss += xv * xv
            for m in range(M):
                dot[m] += xv * rc[t, m]
        best, best_c = 0, -1.0
        for m in range(M):
            den = math.sqrt(ss * rn2[m])
            cc = abs(dot[m]) / den if den > 0 else 0.0
            if cc > best_c:
                best_c, best = cc, m
        mode[i] = best
        a[i] = dot[best] / rn2[best] if rn2[best] > 0 else 0.0
        b[i] = mean - a[i] * rmean[best]
        corr[i] = best_c


def cmd_assign_fit(theta, refs, mode, a, b, corr):
    _cmd_assign_fit(theta, refs, mode, a, b, corr if corr is not None else np.empty(len(mode)))


@njit(cache=True, parallel=True)
def _cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    dr = r_t - r_mean
    r_mean += dr / (n + 1)
    r_m2 += dr * (r_t - r_mean)
    inv = 1.0 / (n + 1)
    for i in prange(len(theta_t)):
        theta_mean[i] += (theta_t[i] - theta_mean[i]) * inv
        co[i] += dr[mode[i]] * (theta_t[i] - theta_mean[i])


def cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    _cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co)



@njit(cache=True, error_model="numpy")  # 1/0 is inf (a neuron without weights, refused after)
def _pathcond_sweep_group(w, g, z, off, s_in, s_out, f_in, f_out, S, P, enorm):
    H, ino, row, bo, oo, outer, inner = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    for h in range(H):
        s = w[bo + h] if bo >= 0 else 0.0
        for r in range(row):
            s += w[ino + h * row + r]
        s_in[h] = s
        s_out[h] = 0.0
    for o in range(outer):
        for h in range(H):
            base = oo + (o * H + h) * inner
            s = 0.0
            for b in range(inner):
                s += w[base + b]
            s_out[h] += s
    A = (row + (1 if bo >= 0 else 0)) - outer * inner
    moved = 0.0
    for h in range(H):
        D = S - s_in[h] - s_out[h]
        if enorm:
            y = np.sqrt(s_out[h] / s_in[h])
            S = D + s_in[h] * y + s_out[h] / y
        else:
            a, bq, c = s_out[h] * (A + P), D * A, s_in[h] * (A - P)
            sq = np.sqrt(bq * bq - 4.0 * a * c)
            y = (2.0 * c) / (-bq - sq) if bq >= 0.0 else (-bq + sq) / (2.0 * a)
            S = D + s_out[h] * y + s_in[h] / y
        dz = np.log(y)
        z[off + h] += dz
        moved += abs(dz)
        f_in[h] = y if enorm else 1.0 / y
        f_out[h] = 1.0 / f_in[h]
    _pathcond_scale_group(w, g, f_in, f_out)
    return S, moved


@njit(cache=True, error_model="numpy")
def _pathcond_scale_group(w, g, f_in, f_out):
    H, ino, row, bo, oo, outer, inner = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    for h in range(H):
        for r in range(row):
            w[ino + h * row + r] *= f_in[h]
        if bo >= 0:
            w[bo + h] *= f_in[h]
    for o in range(outer):
        for h in range(H):
            base = oo + (o * H + h) * inner
            for b in range(inner):
                w[base + b] *= f_out[h]


@njit(cache=True, error_model="numpy")
def _pathcond_objective(w, groups, z, log0, P):
    az, off = 0.0, 0
    for k in range(groups.shape[0]):
        H, row, bo, outer, inner = groups[k, 0], groups[k, 2], groups[k, 3], groups[k, 5], groups[k, 6]
        A = (row + (1 if bo >= 0 else 0)) - outer * inner
        for h in range(H):
            az += A * z[off + h]
        off += H
    return P * np.log(w.sum() / P) - (log0 - az)


@njit(cache=True, error_model="numpy")
def _pathcond_solve(weights, groups, z, objective, has_objective, tol, max_sweeps, enorm):
    P = weights.size
    w = weights.copy()
    log0 = np.log(weights).sum() if has_objective else 0.0
    hmax = groups[:, 0].max()
    s_in, s_out, f_in, f_out = np.empty(hmax), np.empty(hmax), np.empty(hmax), np.empty(hmax)
    sign = 1.0 if enorm else -1.0
    off = 0
    for k in range(groups.shape[0]):
        for h in range(groups[k, 0]):
            f_in[h] = np.exp(sign * z[off + h])
            f_out[h] = 1.0 / f_in[h]
        _pathcond_scale_group(w, groups[k], f_in, f_out)
        off += groups[k, 0]
    if has_objective:
        objective[0] = _pathcond_objective(w, groups, z, log0, P)
    sweep = 0
    while sweep < max_sweeps:
        S, moved, off = w.sum(), 0.0, 0
        for k in range(groups.shape[0]):
            S, m = _pathcond_sweep_group(w, groups[k], z, off, s_in, s_out, f_in, f_out, S, P, enorm)
            moved += m
            off += groups[k, 0]
        sweep += 1
        if has_objective:
            objective[sweep] = _pathcond_objective(w, groups, z, log0, P)
        if moved < tol:
            break
    return sweep


def pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm):
    has = objective is not None
    return int(_pathcond_solve(weights, groups, z, objective if has else np.empty(1), has, tol, max_sweeps, enorm))


# --- Scan and Snap (kernels/scansnap.hpp, scansnap_train.hpp) --------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

@njit(cache=True)
def _ss_bounded(bits, n):
    return np.int64(((bits >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@njit(cache=True)
def _ss_sample(fq, fn, fptr, ftok, fthr, falias, stok, star, use_seq, key, step, B, L, M, count, hq, hn, hlen,
               htok, hcnt, ctx):
    """sample_batch: the histograms of step's batch (row b at b * (L - 1), tokens ascending)."""
    cap = L - 1
    for b in range(B):
        base = (np.uint64(step) * np.uint64(B) + np.uint64(b)) * np.uint64(L)
        pick = _splitmix64(key + base * _GOLDEN)
        if use_seq:
            i = _ss_bounded(pick, star.shape[0])
            for j in range(cap):
                ctx[j] = stok[i, j]
            hq[b], hn[b] = stok[i, L - 1], star[i]
        else:
            f = _ss_bounded(pick, fq.shape[0])
            p0, s = fptr[f], fptr[f + 1] - fptr[f]
            for j in range(1, L):
                bits = _splitmix64(key + (base + np.uint64(j)) * _GOLDEN)
                k = _ss_bounded(bits, s)
                if not (bits & np.uint64(0xFFFFFFFF)) < fthr[p0 + k]:
                    k = falias[p0 + k]
                ctx[j - 1] = ftok[p0 + k]
            hq[b], hn[b] = fq[f], fn[f]
        s = 0
        o = b * cap
        for j in range(cap):
            if count[ctx[j]] == 0:
                htok[o + s] = ctx[j]
                s += 1
            count[ctx[j]] += 1
        htok[o:o + s].sort()
        for j in range(s):
            hcnt[o + j] = count[htok[o + j]]
            count[htok[o + j]] = 0
        hlen[b] = s


@njit(cache=True)
def _ss_forward_backward(Yt, Z, hq, hn, hstart, hlen, htok, hcnt, weight, r, g, dz, u):
    M = Yt.shape[1]
    loss = 0.0
    for b in range(len(hq)):
        p0, s = hstart[b], hlen[b]
        zrow = Z[hq[b]]
        zmax = -np.inf
        for j in range(s):
            zmax = max(zmax, zrow[htok[p0 + j]])
        S = 0.0
        for j in range(s):
            dz[p0 + j] = hcnt[p0 + j] * math.exp(zrow[htok[p0 + j]] - zmax)
            S += dz[p0 + j]
        nf2 = 0.0
        for j in range(s):
            dz[p0 + j] /= S
            nf2 += dz[p0 + j] * dz[p0 + j]
        nf = math.sqrt(nf2)
        rb = r[b]
        rb[:] = 0.0
        for j in range(s):
            g[p0 + j] = dz[p0 + j] / nf
            rb += g[p0 + j] * Yt[htok[p0 + j]]
        lmax = rb.max()
        zn = rb[hn[b]]
        e = np.exp(rb - lmax)
        tot = e.sum()
        loss += weight * (lmax + math.log(tot) - zn)
        rb[:] = e * (weight / tot)
        rb[hn[b]] -= weight
        gv = 0.0
        for j in range(s):
            u[p0 + j] = np.dot(Yt[htok[p0 + j]], rb)
            gv += g[p0 + j] * u[p0 + j]
        fu = 0.0
        for j in range(s):
            u[p0 + j] = (u[p0 + j] - gv * g[p0 + j]) / nf
            fu += dz[p0 + j] * u[p0 + j]
        for j in range(s):
            dz[p0 + j] = dz[p0 + j] * (u[p0 + j] - fu)
    return loss


@njit(cache=True)
def _ss_batch(i, ctx):
    """Step i's batch, its loss and the pieces of both gradients (once per step), as batch() in
    scansnap_train.hpp; the loss of a step taken goes to loss_out. Returns the loss."""
    data, hist, work, opt, params, out = ctx
    fq, fn, fptr, ftok, fprob, fthr, falias, stok, star, use_seq, population, B, L, seed, start = data
    hq, hn, hstart, hlen, htok, hcnt, count, ctxbuf, weight = hist
    r, g, dz, u, GY, GZ, ty, tz, computed, batch_loss = work
    Yt, Z = params[0], params[1]
    loss_out = out[1]
    if computed[0] != i:
        if not population:
            _ss_sample(fq, fn, fptr, ftok, fthr, falias, stok, star, use_seq, _splitmix64(seed), start + i, B, L,
                       Z.shape[0], count, hq, hn, hlen, htok, hcnt, ctxbuf)
        batch_loss[0] = _ss_forward_backward(Yt, Z, hq, hn, hstart, hlen, htok, hcnt, weight, r, g, dz, u)
        if i < opt[0]:
            loss_out[i] = batch_loss[0]
        computed[0] = i
    return batch_loss[0]


@njit(cache=True, inline="always")
def _ss_record(i, rk, ctx):
    data, hist, work, opt, params, out = ctx
    start = data[14]
    fq = data[0]
    Yt, Z = params[0], params[1]
    record, loss_out, rec_loss, rec_Zq, rec_Y, rec_Z, has_zq, has_y, has_z = out
    if rk >= len(record) or record[rk] != start + i:
        return rk, False
    loss = _ss_batch(i, ctx)
    rec_loss[rk] = loss
    if has_zq:
        for f in range(fq.shape[0]):
            rec_Zq[rk, f] = Z[fq[f]]
    if has_y:
        rec_Y[rk] = Yt.T
    if has_z:
        rec_Z[rk] = Z
    return rk + 1, not np.isfinite(loss)


@njit(cache=True, inline="always")
def _ss_step(i, ctx):
    data, hist, work, opt, params, out = ctx
    hq, hn, hstart, hlen, htok, hcnt, count, ctxbuf, weight = hist
    r, g, dz, u, GY, GZ, ty, tz, computed, batch_loss = work
    steps, lr_y, lr_z, kind, mu, b1, b2, eps, adam_t0 = opt
    Yt, Z, mY, vY, mZ, vZ = params
    M, R = Z.shape[0], r.shape[0]
    if not np.isfinite(_ss_batch(i, ctx)):
        return False
    # the sparse gradients, summed entry by entry in the core's order
    for b in range(R):
        for j in range(hstart[b], hstart[b] + hlen[b]):
            ty[htok[j]] = True
            tz[hq[b]] = True
    for l in range(M):
        if ty[l]:
            GY[l] = 0.0
        if tz[l]:
            GZ[l] = 0.0
    for b in range(R):
        for j in range(hstart[b], hstart[b] + hlen[b]):
            GY[htok[j]] += g[j] * r[b]
            GZ[hq[b], htok[j]] += dz[j]
    at = adam_t0 + i + 1
    _optimizer_step(kind, Yt, GY, mY, vY, lr_y, 1.0, mu, b1, b2, eps, at)  # zero outside the touched rows
    _optimizer_step(kind, Z, GZ, mZ, vZ, lr_z, 1.0, mu, b1, b2, eps, at)
    for l in range(M):
        if ty[l]:
            GY[l] = 0.0
            ty[l] = False
        if tz[l]:
            GZ[l] = 0.0
            tz[l] = False
    computed[0] = -1
    return True


_drive_scansnap = _driver("scansnap", _ss_record, _ss_step)


@njit(cache=True)
def _ss_histograms(fq, fn, fptr, ftok, fprob, population, B, L, dt):
    """The batch's histograms: the facts' supports for the population, else B rows of L - 1."""
    if population:
        return fq.copy(), fn.copy(), fptr[:-1].copy(), fptr[1:] - fptr[:-1], ftok.copy(), fprob.astype(dt)
    return (np.empty(B, np.int64), np.empty(B, np.int64), np.arange(B) * (L - 1), np.empty(B, np.int64),
            np.empty(B * (L - 1), np.int64), np.empty(B * (L - 1), dt))


def scansnap_train(Yt, Z, mY, vY, mZ, vZ, facts, sequences, spec, out):
    dt = Z.dtype
    M = Z.shape[0]
    none2 = np.zeros((1, 1), dt)
    i64, u64, f64 = np.zeros(1, np.int64), np.zeros(1, np.uint64), np.zeros(1)
    fa = facts if facts is not None else (i64, i64, np.zeros(2, np.int64), i64, f64, u64, i64)
    sq = sequences if sequences is not None else (np.zeros((1, spec.L), np.int64), i64)
    population, B, L = bool(spec.population), int(spec.batch), int(spec.L)
    data = (*fa, *sq, sequences is not None, population, B, L, np.uint64(spec.seed), int(spec.start_step))
    hq, hn, hstart, hlen, htok, hcnt = _ss_histograms(fa[0], fa[1], fa[2], fa[3], fa[4], population, B, L, dt)
    R = len(hq)
    hist = (hq, hn, hstart, hlen, htok, hcnt, np.zeros(M, np.int64), np.empty(max(L - 1, 1), np.int64), 1.0 / R)
    work = (np.empty((R, M), dt), np.empty_like(hcnt), np.empty_like(hcnt), np.empty_like(hcnt),
            np.zeros((M, M), dt), np.zeros((M, M), dt), np.zeros(M, np.bool_), np.zeros(M, np.bool_),
            np.array([-1], np.int64), np.zeros(1))
    opt = (int(spec.steps), float(spec.lr_y), float(spec.lr_z), int(spec.opt.kind), float(spec.opt.momentum),
           float(spec.opt.beta1), float(spec.opt.beta2), float(spec.opt.eps), int(spec.adam_t0))
    params = tuple(a if a is not None else none2 for a in (Yt, Z, mY, vY, mZ, vZ))
    rec3 = np.zeros((1, 1, 1), dt)
    outs = (np.asarray(spec.record, np.int64), out.loss, out.rec_loss,
            *(a if a is not None else rec3 for a in (out.rec_Zq, out.rec_Y, out.rec_Z)),
            out.rec_Zq is not None, out.rec_Y is not None, out.rec_Z is not None)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = _drive_scansnap(int(spec.steps), (data, hist, work, opt, params, outs))
    return tuple(int(x) for x in res)
