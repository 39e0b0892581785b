"""The associative memory's float64 numpy reference (fastmem.backends.numpy_ref): the fused
softmax, forward/backward, metrics and the representations' training loops of the C++ core
(softmax_xent_grad.hpp, forward_backward.hpp, metrics.hpp, train.hpp, train_projected.hpp,
train_many.hpp, train_models.hpp), written for clarity."""

import numpy as np

from .._rng import splitmix64 as _splitmix64
from ..backends import numpy_ref as ref
from ..specs import LAYERNORM_EPS as _LN_EPS


def sample_tokens(cdf, seed, start_step, out):
    out[...] = ref.draw(cdf, seed, start_step, out.shape[0], out.shape[1])


_NORMAL_STREAM = 0x4E4F524D414C5354  # normal.hpp's kNormalStream


def normal_fill(seed, scale, out):
    """normal.hpp's stream: block k holds the Box-Muller pairs of the words bits(8 k + l)."""
    flat = out.reshape(-1)
    n = flat.size
    if n == 0:
        return
    k = np.arange((n + 15) // 16, dtype=np.uint64)
    counters = (8 * k[:, None] + np.arange(8, dtype=np.uint64)).ravel()
    key = _splitmix64(np.array([seed ^ _NORMAL_STREAM], dtype=np.uint64))
    w = _splitmix64(key ^ _splitmix64(counters)).reshape(-1, 8)
    u1 = ((w >> np.uint64(32)).astype(ref.F) + 0.5) * 2.0**-32
    u2 = (w & np.uint64(0xFFFFFFFF)).astype(ref.F) * 2.0**-32
    r = np.sqrt(-2.0 * np.log(u1))
    block = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1).ravel()
    flat[...] = scale * block[:n]


# --- kernels -----------------------------------------------------------------------

def _score_stats(z, y):
    """(lse, zy, zother) of each row of the scores z (b, M)."""
    zmax = z.max(axis=1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))[:, 0]
    rows = np.arange(len(y))
    other = z.copy()
    other[rows, y] = -np.inf
    return lse, z[rows, y], other.max(axis=1)


def _fused(q, u, y, w):
    """(lse, zy, zother, H) of softmax_xent_grad, in q's dtype."""
    w = w.astype(q.dtype, copy=False)
    z = q @ u.T
    lse, zy, zother = _score_stats(z, y)
    h = w[:, None] * (np.exp(z - lse[:, None]) @ u - u[y])
    return lse, zy, zother, h


def softmax_xent_grad(q, u, y, w, h, lse, zy, zother, chunk):
    out = _fused(q.astype(ref.F), u.astype(ref.F), y, w.astype(ref.F))
    for dst, src in zip((lse, zy, zother, h), out):
        dst[...] = src


def sgd_rank_update(W, Eb, H, alpha):
    W[...] = W.astype(ref.F) + alpha * (Eb.astype(ref.F).T @ H.astype(ref.F))


def _forward_backward(E, U, W, tokens, w, y, layernorm, targets=None):
    """Loss sum_i w_i l_i, the margins, dL/dQ (b, d) and E[tokens]; targets: per-row, else y[tokens]."""
    Eb = E if tokens is None else E[tokens]
    q = Eb @ W
    if layernorm:
        r = np.sqrt((q * q).sum(axis=1, keepdims=True) + _LN_EPS)
        q = q / r
    yb = targets if targets is not None else (y if tokens is None else y[tokens])
    lse, zy, zother, h = _fused(q, U, yb, w)
    if layernorm:
        h = (h - q * (q * h).sum(axis=1, keepdims=True)) / r
    return float(w @ (lse - zy)), zy - zother, h, Eb


def _metrics(E, U, W, p, y, layernorm):
    loss, margins, h, _ = _forward_backward(E, U, W, None, p, y, layernorm)
    return loss, float(p[margins > 0].sum()), margins, E.T @ h


def population_metrics(E, onehot_col, onehot_scale, U, W, p, y, layernorm, chunk, margins, grad):
    loss, acc, m, g = _metrics(E.astype(ref.F), U.astype(ref.F), W.astype(ref.F), p, y, layernorm)
    if margins is not None:
        margins[...] = m
    if grad is not None:
        grad[...] = g
    return loss, acc


def _hessian(E, U, W, p, y):
    """The d^2 x d^2 Hessian of the population loss in vec(W) (row-major), for small d."""
    d = E.shape[1]
    s = np.exp(E @ W @ U.T)
    s /= s.sum(axis=1, keepdims=True)
    Hs = np.zeros((d * d, d * d))
    for x in range(E.shape[0]):
        cov = (U.T * s[x]) @ U - np.outer(s[x] @ U, s[x] @ U)
        Hs += p[x] * np.kron(np.outer(E[x], E[x]), cov)
    return Hs


def sharpness(E, onehot_col, onehot_scale, U, W, p, y, chunk, iters, tol, seed):
    """Top eigenvalue of the exact Hessian (eigvalsh), which the compiled power iteration must match."""
    return float(np.linalg.eigvalsh(_hessian(E.astype(ref.F), U.astype(ref.F), W.astype(ref.F), p, y))[-1])


def _aggregate(draws):
    """Distinct tokens in first-appearance order and their weights count / b."""
    uniq, first, counts = np.unique(draws, return_index=True, return_counts=True)
    order = np.argsort(first)
    return uniq[order], counts[order] / len(draws)


def _batch(tp, tokens, cdf, p, t):
    """Tokens (None: all N) and weights of step t, as BatchSource in train.hpp."""
    if tp.batch_size == 0:
        return None, p
    gt = tp.start_step + t
    draws = tokens[t] if tokens is not None else ref.draw(cdf, tp.seed, gt, 1, tp.batch_size)[0]
    return _aggregate(draws)


def _batches(tp, tokens, cdf, p, opt):
    """The driver's batch(t): step t's tokens, weights and learning rate."""
    return lambda t: (*_batch(tp, tokens, cdf, p, t), ref.lr_at(opt, tp.start_step + t))


def _store(rec, r, loss, acc, margins):
    for key, val in (("loss", loss), ("accuracy", acc), ("margins", margins)):
        if getattr(rec, key) is not None:
            getattr(rec, key)[r] = val


def _wants_metrics(rec):
    return rec.loss is not None or rec.accuracy is not None or rec.margins is not None


def _progress(result):
    """(steps done, records written) of a trainer's (status, done, records, ...)."""
    return int(result[1]), int(result[2])


@ref.interruptible(_progress)
def train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    # A diverging run is a result, not an error: NaN/Inf is recorded and ends the run.
    with np.errstate(over="ignore", invalid="ignore"):
        return _train(E.astype(ref.F), U.astype(ref.F), W, p, y, cdf, tokens, opt, tp, rec, m, v, t0)


def _train(E, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    ln = tp.layernorm
    state = {"t": t0, "W": W.astype(ref.F),
             "m": None if m is None else m.astype(ref.F),
             "v": None if v is None else v.astype(ref.F)}

    def record(r):
        loss = None
        if _wants_metrics(rec):
            loss, acc, margins, _ = _metrics(E, U, state["W"], p, y, ln)
            _store(rec, r, loss, acc, margins)
        if rec.W is not None:
            rec.W[r] = state["W"]
        if rec.sharpness is not None:
            rec.sharpness[r] = sharpness(E, None, None, U, state["W"], p, y, 0, 0, 0.0, 0)
        return loss

    def step(t, toks, w, lr):
        loss, _, h, Eb = _forward_backward(E, U, state["W"], toks, w, y, ln)
        if not np.isfinite(loss):
            return False
        state["W"] = ref.optimizer_step(opt, lr, Eb.T @ h, state["W"], state)
        for name in ("W", "m", "v"):
            state[name] = ref.held(state[name], W.dtype)
        return True

    status, done, r = ref.drive(tp.steps, rec.at, record, step, _batches(tp, tokens, cdf, p, opt))
    W[...] = state["W"]
    for name, arr in (("m", m), ("v", v)):
        if arr is not None and state[name] is not None:
            arr[...] = state[name]
    return status, done, r, state["t"]


# --- the dual representation (dual_step.hpp, train_dual in train.hpp) --------------

def _residual(Z, y, toks, w):
    """Loss sum_i w_i l(Z[x_i]), margins and residual rows G_i = w_i (softmax - onehot)."""
    Zb = Z if toks is None else Z[toks]
    yb = y if toks is None else y[toks]
    lse, zy, zother = _score_stats(Zb, yb)
    G = np.exp(Zb - lse[:, None])
    G[np.arange(len(yb)), yb] -= 1.0
    return float(w @ (lse - zy)), zy - zother, w[:, None] * G


def dual_rebuild_W(E, onehot_col, onehot_scale, U, W0, A, c, W_out):
    AU = A.astype(ref.F) if U is None else A.astype(ref.F) @ U.astype(ref.F)
    W_out[...] = c * W0.astype(ref.F) - E.astype(ref.F).T @ AU


def _readout_residual(Q, U, y, toks, w):
    """The LayerNorm model's residual on read-outs Q (N x d): loss, margins, dL/dQ rows."""
    Qb = Q if toks is None else Q[toks]
    r = np.sqrt((Qb * Qb).sum(axis=1, keepdims=True) + _LN_EPS)
    h = Qb / r
    yb = y if toks is None else y[toks]
    lse, zy, zother, dh = _fused(h, U, yb, w)
    return float(w @ (lse - zy)), zy - zother, (dh - h * (h * dh).sum(axis=1, keepdims=True)) / r


@ref.interruptible(lambda result: (*_progress(result), float(result[3])))  # with W0's scale c
def train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    with np.errstate(over="ignore", invalid="ignore"):
        return _train_dual(E.astype(ref.F), U.astype(ref.F), W0.astype(ref.F), p, y, cdf, tokens, opt, tp, rec,
                           Z, A, mA, mZ, c, fresh)


def _train_dual(E, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    readout = tp.layernorm  # state on the read-outs E W (N x d) instead of the scores
    KE = E @ E.T
    KU = np.eye(E.shape[1]) if readout else U @ U.T
    zeros = np.zeros(Z.shape)
    if fresh:
        st = {"Z": E @ W0 if readout else E @ W0 @ U.T, "A": zeros, "c": 1.0, "mA": zeros, "mZ": zeros}
    else:
        st = {"Z": Z.astype(ref.F), "A": A.astype(ref.F), "c": c,
              "mA": zeros if mA is None else mA.astype(ref.F), "mZ": zeros if mZ is None else mZ.astype(ref.F)}

    def W():
        return st["c"] * W0 - E.T @ (st["A"] if readout else st["A"] @ U)

    def residual(toks, w):
        return _readout_residual(st["Z"], U, y, toks, w) if readout else _residual(st["Z"], y, toks, w)

    def record(r):
        loss = None
        if _wants_metrics(rec):
            loss, margins, _ = residual(None, p)
            _store(rec, r, loss, float(p[margins > 0].sum()), margins)
        if rec.W is not None:
            rec.W[r] = W()
        if rec.sharpness is not None:
            rec.sharpness[r] = sharpness(E, None, None, U, W(), p, y, 0, 0, 0.0, 0)
        return loss

    def step(t, toks, w, lr):
        loss, _, G = residual(toks, w)
        if not np.isfinite(loss):
            return False
        decay = 1.0 - lr * opt.weight_decay
        full = np.zeros_like(st["A"])
        np.add.at(full, slice(None) if toks is None else toks, G)
        st["mA"] = opt.momentum * st["mA"] + full
        st["mZ"] = opt.momentum * st["mZ"] + KE @ full @ KU
        st["Z"] = decay * st["Z"] - lr * st["mZ"]
        st["A"] = decay * st["A"] + lr * st["mA"]
        st["c"] *= decay
        for name in ("Z", "A", "mA", "mZ"):
            st[name] = ref.held(st[name], Z.dtype)
        return True

    status, done, r = ref.drive(tp.steps, rec.at, record, step, _batches(tp, tokens, cdf, p, opt))
    Z[...], A[...] = st["Z"], st["A"]
    if mA is not None:
        mA[...], mZ[...] = st["mA"], st["mZ"]
    return status, done, r, st["c"]


def sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out):
    W64 = W.astype(ref.F)
    w = np.full(len(x), 1.0 / len(x))
    loss, _, h, Eb = _forward_backward(E.astype(ref.F), U.astype(ref.F), W64, x, w, None, layernorm, targets=y)
    out[...] = W64 - lr * (Eb.T @ h)
    return loss


@ref.interruptible(lambda result: (0, 0))
def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    """Run r: full-batch GD on (E[r], U[r], W[r], p[r], y[r]) at lr[r], as train() with
    batch_size 0 and a record at every step (the last one kept), on the one loop."""
    every = range(steps + 1)  # a record at every step, without an array of steps + 1 entries
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(E.shape[0]):
            Er, Ur = E[r].astype(ref.F), U[r].astype(ref.F)
            run = {"W": W[r].astype(ref.F)}

            def record(_):  # called within this iteration: the closure sees this run
                run["loss"], run["accuracy"], _, run["g"] = _metrics(Er, Ur, run["W"], p[r], y[r], False)
                return run["loss"]

            def step(_):
                run["W"] = run["W"] - lr[r] * run["g"]
                return True

            status[r] = ref.drive(steps, every, record, step)[0]
            W[r], loss[r], accuracy[r] = run["W"], run["loss"], run["accuracy"]


@ref.interruptible(_progress)
def train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec):
    """train() with V = W U^T (d x M) in place of W, for Adam(0, 0) or sign descent without
    LayerNorm: the W gradient is A U with A = E_b^T Delta (train_projected.hpp)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        E, U, st = E.astype(ref.F), U.astype(ref.F), {"V": V.astype(ref.F)}

        def record(r):
            loss, margins, _ = _residual(E @ st["V"], y, None, p)
            _store(rec, r, loss, float(p[margins > 0].sum()), margins)
            return loss

        def step(t, toks, w, lr):
            Eb, yb = (E, y) if toks is None else (E[toks], y[toks])
            loss, _, G = _residual(Eb @ st["V"], yb, None, w)
            if not np.isfinite(loss):
                return False
            g = (Eb.T @ G) @ U
            s = np.sign(g) if opt.kind == 2 else g / (np.abs(g) + opt.eps)
            st["V"] = (1.0 - lr * opt.weight_decay) * st["V"] - lr * s @ U.T
            return True

        status, done, r = ref.drive(tp.steps, rec.at, record, step, _batches(tp, tokens, cdf, p, opt))
    V[...] = st["V"]
    return status, done, r


# --- the learnable and exponential models (train_models.hpp) ----------------------------------

def _model_pass(kind, E, U, W, toks, w, y, ln, grads):
    Eb = E if toks is None else E[toks]
    q = Eb @ W if kind == 1 else np.maximum(Eb, 0.0)
    r = np.sqrt((q * q).sum(axis=1, keepdims=True) + _LN_EPS) if ln else 1.0
    h = q / r
    yb = y if toks is None else y[toks]
    z = h @ U.T
    lse, zy, zother = _score_stats(z, yb)
    loss = float(w @ (lse - zy))
    if not grads:
        return loss, zy - zother, None
    G = np.exp(z - lse[:, None])
    G[np.arange(len(yb)), yb] -= 1.0
    G *= w[:, None]
    dh = G @ U
    if ln:
        dh = (dh - h * (h * dh).sum(axis=1, keepdims=True)) / r
    grads = {"U": G.T @ h}
    if kind == 1:
        grads["W"], grads["E"] = Eb.T @ dh, dh @ W.T
    else:
        grads["E"] = dh * (Eb > 0)
    return loss, zy - zother, grads


@ref.interruptible(_progress)
def train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    with np.errstate(over="ignore", invalid="ignore"):
        return _train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec)


def _train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    P = {"E": E.astype(ref.F), "U": U.astype(ref.F), "W": None if W is None else W.astype(ref.F)}
    lrs = {"E": opt.lr_E, "U": opt.lr_U}

    def update(x, g, lr):
        return x - lr * (g / (np.abs(g) + opt.opt.eps) if opt.normalized else g)

    def record(r):
        loss, margins, _ = _model_pass(kind, P["E"], P["U"], P["W"], None, p, y, tp.layernorm, False)
        _store(rec, r, loss, float(p[margins > 0].sum()), margins)
        if rec.W is not None and P["W"] is not None:
            rec.W[r] = P["W"]
        return loss

    def step(t, toks, w, lr):  # lr: W's (a constant schedule); E and U have their own
        loss, _, g = _model_pass(kind, P["E"], P["U"], P["W"], toks, w, y, tp.layernorm, True)
        if not np.isfinite(loss):
            return False
        rows = np.arange(len(p)) if toks is None else toks
        P["E"][rows] = update(P["E"][rows], g["E"], lrs["E"])
        for name in ("U", "W"):
            if name in g:
                P[name] = update(P[name], g[name], lr if name == "W" else lrs[name])
        return True

    status, done, r = ref.drive(tp.steps, rec.at, record, step, _batches(tp, tokens, cdf, p, opt.opt))
    E[...], U[...] = P["E"], P["U"]
    if W is not None:
        W[...] = P["W"]
    return status, done, r
