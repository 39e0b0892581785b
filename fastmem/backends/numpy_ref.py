"""The float64 numpy reference: the oracle of every test and the last-resort backend.

Written for clarity, not speed: every kernel computes in float64 whatever the input
dtype and writes its outputs in the caller's dtype. Semantics (sampling stream,
duplicate aggregation, schedules, optimizers, recording, divergence) mirror the C++
core in csrc/include/fastmem exactly.
"""

import numpy as np

from .._rng import splitmix64 as _splitmix64
from ..specs import LAYERNORM_EPS as _LN_EPS
from ..specs import RecordSpec

INFO = {"precision": "float64 internally"}
_F = np.float64


# --- sampling: the counter-based stream of rng.hpp ---------------------------------

def _uniform(seed, counters):
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    bits = _splitmix64(key ^ _splitmix64(np.asarray(counters, dtype=np.uint64)))
    return (bits >> np.uint64(11)).astype(_F) * 2.0**-53


def _draw(cdf, seed, start_step, steps, b):
    counters = np.arange(start_step * b, (start_step + steps) * b, dtype=np.uint64)
    x = np.searchsorted(cdf, _uniform(seed, counters), side="right")
    return np.minimum(x, len(cdf) - 1).reshape(steps, b)


def sample_tokens(cdf, seed, start_step, out):
    out[...] = _draw(cdf, seed, start_step, out.shape[0], out.shape[1])


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
    u1 = ((w >> np.uint64(32)).astype(_F) + 0.5) * 2.0**-32
    u2 = (w & np.uint64(0xFFFFFFFF)).astype(_F) * 2.0**-32
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
    out = _fused(q.astype(_F), u.astype(_F), y, w.astype(_F))
    for dst, src in zip((lse, zy, zother, h), out):
        dst[...] = src


def sgd_rank_update(W, Eb, H, alpha):
    W[...] = W.astype(_F) + alpha * (Eb.astype(_F).T @ H.astype(_F))


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
    loss, acc, m, g = _metrics(E.astype(_F), U.astype(_F), W.astype(_F), p, y, layernorm)
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
    return float(np.linalg.eigvalsh(_hessian(E.astype(_F), U.astype(_F), W.astype(_F), p, y))[-1])


# --- optimizers and the driver (optim.hpp, train.hpp) ------------------------------

def _lr_at(opt, t):
    if opt.schedule == 1:
        T = opt.schedule_steps
        frac = min(t / T, 1.0) if T > 0 else 0.0
        return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1.0 + np.cos(np.pi * frac))
    if opt.schedule == 2:
        return opt.lr * opt.gamma ** (t // opt.schedule_steps)
    return opt.lr


def _optimizer_step(opt, lr, g, W, state):
    state["t"] += 1
    t, decay = state["t"], 1.0 - lr * opt.weight_decay
    if opt.kind == 0:
        if opt.momentum != 0.0:
            state["m"] = opt.momentum * state["m"] + g
            return decay * W - lr * state["m"]
        return decay * W - lr * g
    if opt.kind == 1:
        b1, b2 = opt.beta1, opt.beta2
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        mhat = state["m"] / (1 - b1**t)
        vhat = state["v"] / (1 - b2**t)
        return decay * W - lr * mhat / (np.sqrt(vhat) + opt.eps)
    return decay * W - lr * np.sign(g)


def _held(a, dtype):
    """a (float64) as the caller's arrays hold it: rounded to float32 for float32 state, so that
    a run split in two (the state written out and read back between) is the same run."""
    return a if a is None or dtype == _F else a.astype(dtype).astype(_F)


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
    draws = tokens[t] if tokens is not None else _draw(cdf, tp.seed, gt, 1, tp.batch_size)[0]
    return _aggregate(draws)


def _drive(steps, rec, record, step):
    """The loop of drive() in train.hpp: record at t, then step t; record(r) returns the loss it saw."""
    status, r, done = 0, 0, 0
    rec_at = rec.at
    for t in range(steps + 1):
        while r < len(rec_at) and rec_at[r] == t:
            loss = record(r)
            if loss is not None and not np.isfinite(loss):
                status = 1
            r += 1
        done = t
        if t == steps or status != 0:
            break
        if not step(t):
            status = 1
            break
    return status, done, r


def _store(rec, r, loss, acc, margins):
    for key, val in (("loss", loss), ("accuracy", acc), ("margins", margins)):
        if getattr(rec, key) is not None:
            getattr(rec, key)[r] = val


def _wants_metrics(rec):
    return rec.loss is not None or rec.accuracy is not None or rec.margins is not None


def train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    # A diverging run is a result, not an error: NaN/Inf is recorded and ends the run.
    with np.errstate(over="ignore", invalid="ignore"):
        return _train(E.astype(_F), U.astype(_F), W, p, y, cdf, tokens, opt, tp, rec, m, v, t0)


def _train(E, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    ln = tp.layernorm
    state = {"t": t0, "W": W.astype(_F),
             "m": None if m is None else m.astype(_F),
             "v": None if v is None else v.astype(_F)}

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

    def step(t):
        toks, w = _batch(tp, tokens, cdf, p, t)
        loss, _, h, Eb = _forward_backward(E, U, state["W"], toks, w, y, ln)
        if not np.isfinite(loss):
            return False
        lr = _lr_at(opt, tp.start_step + t)
        state["W"] = _optimizer_step(opt, lr, Eb.T @ h, state["W"], state)
        for name in ("W", "m", "v"):
            state[name] = _held(state[name], W.dtype)
        return True

    status, done, r = _drive(tp.steps, rec, record, step)
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
    AU = A.astype(_F) if U is None else A.astype(_F) @ U.astype(_F)
    W_out[...] = c * W0.astype(_F) - E.astype(_F).T @ AU


def _readout_residual(Q, U, y, toks, w):
    """The LayerNorm model's residual on read-outs Q (N x d): loss, margins, dL/dQ rows."""
    Qb = Q if toks is None else Q[toks]
    r = np.sqrt((Qb * Qb).sum(axis=1, keepdims=True) + _LN_EPS)
    h = Qb / r
    yb = y if toks is None else y[toks]
    lse, zy, zother, dh = _fused(h, U, yb, w)
    return float(w @ (lse - zy)), zy - zother, (dh - h * (h * dh).sum(axis=1, keepdims=True)) / r


def train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    with np.errstate(over="ignore", invalid="ignore"):
        return _train_dual(E.astype(_F), U.astype(_F), W0.astype(_F), p, y, cdf, tokens, opt, tp, rec,
                           Z, A, mA, mZ, c, fresh)


def _train_dual(E, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    readout = tp.layernorm  # state on the read-outs E W (N x d) instead of the scores
    KE = E @ E.T
    KU = np.eye(E.shape[1]) if readout else U @ U.T
    zeros = np.zeros(Z.shape)
    if fresh:
        st = {"Z": E @ W0 if readout else E @ W0 @ U.T, "A": zeros, "c": 1.0, "mA": zeros, "mZ": zeros}
    else:
        st = {"Z": Z.astype(_F), "A": A.astype(_F), "c": c,
              "mA": zeros if mA is None else mA.astype(_F), "mZ": zeros if mZ is None else mZ.astype(_F)}

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

    def step(t):
        toks, w = _batch(tp, tokens, cdf, p, t)
        loss, _, G = residual(toks, w)
        if not np.isfinite(loss):
            return False
        lr = _lr_at(opt, tp.start_step + t)
        decay = 1.0 - lr * opt.weight_decay
        full = np.zeros_like(st["A"])
        np.add.at(full, slice(None) if toks is None else toks, G)
        st["mA"] = opt.momentum * st["mA"] + full
        st["mZ"] = opt.momentum * st["mZ"] + KE @ full @ KU
        st["Z"] = decay * st["Z"] - lr * st["mZ"]
        st["A"] = decay * st["A"] + lr * st["mA"]
        st["c"] *= decay
        for name in ("Z", "A", "mA", "mZ"):
            st[name] = _held(st[name], Z.dtype)
        return True

    status, done, r = _drive(tp.steps, rec, record, step)
    Z[...], A[...] = st["Z"], st["A"]
    if mA is not None:
        mA[...], mZ[...] = st["mA"], st["mZ"]
    return status, done, r, st["c"]


def sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out):
    W64 = W.astype(_F)
    w = np.full(len(x), 1.0 / len(x))
    loss, _, h, Eb = _forward_backward(E.astype(_F), U.astype(_F), W64, x, w, None, layernorm, targets=y)
    out[...] = W64 - lr * (Eb.T @ h)
    return loss


def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    """Run r: full-batch GD on (E[r], U[r], W[r], p[r], y[r]) at lr[r], as train() with
    batch_size 0 and a record at the last step."""
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(E.shape[0]):
            Er, Ur, Wr = E[r].astype(_F), U[r].astype(_F), W[r].astype(_F)
            status[r] = 0
            for t in range(steps + 1):
                lo, acc, _, g = _metrics(Er, Ur, Wr, p[r], y[r], False)
                if not np.isfinite(lo):
                    status[r] = 1
                    break
                if t < steps:
                    Wr = Wr - lr[r] * g
            W[r], loss[r], accuracy[r] = Wr, lo, acc


def train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec):
    """train() with V = W U^T (d x M) in place of W, for Adam(0, 0) or sign descent without
    LayerNorm: the W gradient is A U with A = E_b^T Delta (train_projected.hpp)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        E, U, st = E.astype(_F), U.astype(_F), {"V": V.astype(_F)}

        def record(r):
            loss, margins, _ = _residual(E @ st["V"], y, None, p)
            _store(rec, r, loss, float(p[margins > 0].sum()), margins)
            return loss

        def step(t):
            toks, w = _batch(tp, tokens, cdf, p, t)
            Eb, yb = (E, y) if toks is None else (E[toks], y[toks])
            loss, _, G = _residual(Eb @ st["V"], yb, None, w)
            if not np.isfinite(loss):
                return False
            lr = _lr_at(opt, tp.start_step + t)
            g = (Eb.T @ G) @ U
            s = np.sign(g) if opt.kind == 2 else g / (np.abs(g) + opt.eps)
            st["V"] = (1.0 - lr * opt.weight_decay) * st["V"] - lr * s @ U.T
            return True

        status, done, r = _drive(tp.steps, rec, record, step)
    V[...] = st["V"]
    return status, done, r


# --- the learnable and exponential models (models.hpp) ----------------------------------

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


def train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    with np.errstate(over="ignore", invalid="ignore"):
        return _train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec)


def _train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    P = {"E": E.astype(_F), "U": U.astype(_F), "W": None if W is None else W.astype(_F)}
    lrs = {"E": opt.lr_E, "U": opt.lr_U, "W": opt.lr_W}

    def update(x, g, lr):
        return x - lr * (g / (np.abs(g) + opt.eps) if opt.normalized else g)

    def record(r):
        loss, margins, _ = _model_pass(kind, P["E"], P["U"], P["W"], None, p, y, tp.layernorm, False)
        _store(rec, r, loss, float(p[margins > 0].sum()), margins)
        if rec.W is not None and P["W"] is not None:
            rec.W[r] = P["W"]
        return loss

    def step(t):
        toks, w = _batch(tp, tokens, cdf, p, t)
        loss, _, g = _model_pass(kind, P["E"], P["U"], P["W"], toks, w, y, tp.layernorm, True)
        if not np.isfinite(loss):
            return False
        rows = np.arange(len(p)) if toks is None else toks
        P["E"][rows] = update(P["E"][rows], g["E"], lrs["E"])
        for name in ("U", "W"):
            if name in g:
                P[name] = update(P[name], g[name], lrs[name])
        return True

    status, done, r = _drive(tp.steps, rec, record, step)
    E[...], U[...] = P["E"], P["U"]
    if W is not None:
        W[...] = P["W"]
    return status, done, r


# --- CMD (kernels/cmd.hpp) ---------------------------------------------------------

def cmd_assign_fit(theta, refs, mode, a, b, corr):
    X = theta.astype(_F)
    Xc, Rc = X - X.mean(axis=0), refs - refs.mean(axis=0)
    den = np.sqrt(np.outer((Xc * Xc).sum(axis=0), (Rc * Rc).sum(axis=0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(den > 0, np.abs(Xc.T @ Rc) / den, 0.0)  # (P, M); a constant series correlates 0
    mode[...] = c.argmax(axis=1)
    r = refs[:, mode]
    rc = r - r.mean(axis=0)
    var = (rc * rc).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a[...] = np.where(var > 0, (Xc * rc).sum(axis=0) / var, 0.0)
    b[...] = X.mean(axis=0) - a * r.mean(axis=0)
    if corr is not None:
        corr[...] = c[np.arange(len(mode)), mode]


def cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    dr = r_t - r_mean
    r_mean += dr / (n + 1)
    r_m2 += dr * (r_t - r_mean)
    theta_mean += (theta_t - theta_mean) / (n + 1)
    co += dr[mode] * (theta_t - theta_mean)


def pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm):
    """PathCond's coordinate solver as docs/pathcond.md states it, one neuron at a time on explicit
    index sets of its incoming and outgoing parameters (ENorm: balance their theta^2)."""
    P = weights.size
    sets, A = [], []
    for Hn, ino, row, bo, oo, outer, inner in groups:
        for h in range(Hn):
            in_idx = np.arange(ino + h * row, ino + (h + 1) * row)
            if bo >= 0:
                in_idx = np.append(in_idx, bo + h)
            out_idx = (oo + (np.arange(outer)[:, None] * Hn + h) * inner + np.arange(inner)).ravel()
            sets.append((in_idx, out_idx))
            A.append(len(in_idx) - len(out_idx))
    sign = 1.0 if enorm else -1.0  # the factor of incoming entries of the working vector, as e^{sign z}
    w = weights.astype(np.float64).copy()
    for (in_idx, out_idx), zh in zip(sets, z):
        w[in_idx] *= np.exp(sign * zh)
        w[out_idx] *= np.exp(-sign * zh)
    log0 = np.log(weights).sum() if objective is not None else 0.0

    def F():
        return P * np.log(w.sum() / P) - (log0 - np.dot(A, z))

    if objective is not None:
        objective[0] = F()
    sweep = 0
    while sweep < max_sweeps:
        S, moved = w.sum(), 0.0
        for n, (in_idx, out_idx) in enumerate(sets):
            s_in, s_out = w[in_idx].sum(), w[out_idx].sum()
            D = S - s_in - s_out
            if enorm:
                with np.errstate(divide="ignore", invalid="ignore"):  # a neuron without weights: inf, refused
                    y = np.sqrt(s_out / s_in)
                S = D + s_in * y + s_out / y
            else:
                a, b, c = s_out * (A[n] + P), D * A[n], s_in * (A[n] - P)
                y = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
                S = D + s_out * y + s_in / y
            z[n] += np.log(y)
            moved += abs(np.log(y))
            w[in_idx] *= y if enorm else 1 / y
            w[out_idx] *= 1 / y if enorm else y
        sweep += 1
        if objective is not None:
            objective[sweep] = F()
        if moved < tol:
            break
    return sweep


# --- Scan and Snap (docs/scansnap.md) ------------------------------------------------------

def _scansnap_grads(Y, Z, C, q, n, weight):
    """The loss and both gradients for rows of context weights C (R x M: counts, or P(l|n)),
    queries q and targets n, each row weighted by ``weight``; dense, float64, as the paper writes
    them (Lemma 1): attention over the context, f = X^T b / |X^T b|, logits = Y f."""
    mask = C > 0
    Zq = Z[q]
    zmax = np.where(mask, Zq, -np.inf).max(1, keepdims=True)
    w = np.where(mask, C * np.exp(np.where(mask, Zq - zmax, 0.0)), 0.0)
    f = w / w.sum(1, keepdims=True)
    nf = np.linalg.norm(f, axis=1, keepdims=True)
    g = f / nf
    logits = g @ Y.T
    lmax = logits.max(1, keepdims=True)
    lse = lmax[:, 0] + np.log(np.exp(logits - lmax).sum(1))
    rows = np.arange(len(q))
    loss = weight * float((lse - logits[rows, n]).sum())
    r = np.exp(logits - lse[:, None])
    r[rows, n] -= 1.0
    r *= weight
    dY = r.T @ g
    vv = r @ Y
    u = (vv - (g * vv).sum(1, keepdims=True) * g) / nf
    dZq = f * (u - (f * u).sum(1, keepdims=True))
    dZ = np.zeros_like(Z)
    np.add.at(dZ, q, dZq)
    return loss, dY, dZ


def scansnap_train(Yt, Z, mY, vY, mZ, vZ, facts, sequences, spec, out):
    """The Scan and Snap training loop on dense float64 arrays (one-hot-free, but every product
    dense): the reference the histogram kernels are tested against."""
    from ..scansnap.data import draw

    M = Z.shape[0]
    Y, Zw = Yt.T.astype(_F), Z.astype(_F)
    # the optimizers' state as _optimizer_step keeps it (Y's in Y's layout)
    held = {"Y": (mY, vY, True), "Z": (mZ, vZ, False)}
    state = {k: {"t": spec.adam_t0, **{name: None if a is None else (a.T if tr else a).astype(_F)
                                       for name, a in (("m", m), ("v", v))}} for k, (m, v, tr) in held.items()}
    cache = {}
    if spec.population:  # one row per fact, its context distribution: the same batch every step
        C_pop = np.zeros((len(facts.q), M), _F)
        for f in range(len(facts.q)):
            C_pop[f, facts.tok[facts.ptr[f]:facts.ptr[f + 1]]] = facts.prob[facts.ptr[f]:facts.ptr[f + 1]]

    def batch_grads(t):
        """Loss and gradients of step t's batch."""
        if cache.get("t") != t:
            if spec.population:
                C, q, n, weight = C_pop, facts.q, facts.n, 1.0 / len(facts.q)
            else:
                tokens, n = draw(facts, sequences, spec.seed, spec.start_step + t, spec.batch, spec.L)
                q, weight = tokens[:, -1], 1.0 / spec.batch
                C = np.zeros((spec.batch, M), _F)
                np.add.at(C, (np.repeat(np.arange(spec.batch), spec.L - 1), tokens[:, :-1].ravel()), 1.0)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                cache.update(t=t, grads=_scansnap_grads(Y, Zw, C, q, n, weight))
            if t < spec.steps:
                out.loss[t] = cache["grads"][0]
        return cache["grads"]

    def record(r):
        loss = batch_grads(int(spec.record[r]) - spec.start_step)[0]
        out.rec_loss[r] = loss
        for arr, val in ((out.rec_Zq, Zw[facts.q] if out.rec_Zq is not None else None), (out.rec_Y, Y),
                         (out.rec_Z, Zw)):
            if arr is not None:
                arr[r] = val
        return loss

    def step(t):
        loss, dY, dZ = batch_grads(t)
        if not np.isfinite(loss):
            return False
        Y[...] = _optimizer_step(spec.opt, spec.lr_y, dY, Y, state["Y"])
        Zw[...] = _optimizer_step(spec.opt, spec.lr_z, dZ, Zw, state["Z"])
        cache.clear()
        return True

    status, done, rk = _drive(spec.steps, RecordSpec(np.asarray(spec.record) - spec.start_step), record, step)
    Yt[...], Z[...] = Y.T, Zw
    for k, (m, v, tr) in held.items():
        for name, a in (("m", m), ("v", v)):
            if a is not None:
                a[...] = state[k][name].T if tr else state[k][name]
    return status, done, rk
