"""Scan and Snap's float64 numpy reference (docs/scansnap.md), dense, as the paper writes it."""

import numpy as np

from ..backends import numpy_ref as ref
from .data import draw


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


@ref.interruptible(lambda result: (int(result[1]), int(result[2])))
def scansnap_train(Yt, Z, mY, vY, mZ, vZ, facts, sequences, spec, out):
    """The Scan and Snap training loop on dense float64 arrays (one-hot-free, but every product
    dense): the reference the histogram kernels are tested against."""

    M = Z.shape[0]
    Y, Zw = Yt.T.astype(ref.F), Z.astype(ref.F)
    # the optimizers' state as ref.optimizer_step keeps it (Y's in Y's layout)
    held = {"Y": (mY, vY, True), "Z": (mZ, vZ, False)}
    state = {k: {"t": spec.adam_t0, **{name: None if a is None else (a.T if tr else a).astype(ref.F)
                                       for name, a in (("m", m), ("v", v))}} for k, (m, v, tr) in held.items()}
    cache = {}
    if spec.population:  # one row per fact, its context distribution: the same batch every step
        C_pop = np.zeros((len(facts.q), M), ref.F)
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
                C = np.zeros((spec.batch, M), ref.F)
                np.add.at(C, (np.repeat(np.arange(spec.batch), spec.L - 1), tokens[:, :-1].ravel()), 1.0)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                cache.update(t=t, grads=_scansnap_grads(Y, Zw, C, q, n, weight))
            if t < len(out.loss):  # empty where each step's loss is not kept
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
        Y[...] = ref.optimizer_step(spec.opt, spec.lr_y, dY, Y, state["Y"])
        Zw[...] = ref.optimizer_step(spec.opt, spec.lr_z, dZ, Zw, state["Z"])
        cache.clear()
        return True

    status, done, rk = ref.drive(spec.steps, np.asarray(spec.record) - spec.start_step, record, step)
    Yt[...], Z[...] = Y.T, Zw
    for k, (m, v, tr) in held.items():
        for name, a in (("m", m), ("v", v)):
            if a is not None:
                a[...] = state[k][name].T if tr else state[k][name]
    return status, done, rk
