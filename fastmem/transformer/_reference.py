"""The induction-head kernels' float64 numpy reference: the sampler as one loop over the draws,
the model dense over the whole batch (B x T x T), written as the design's equations
(docs/transformer.md) and not as the compiled kernels' look-up tables."""

import numpy as np

from ..backends import numpy_ref as ref
from .._rng import splitmix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M32 = np.uint64(0xFFFFFFFF)


def _bits(key, counter):
    return int(splitmix64(np.array([key + np.uint64(counter) * _GOLDEN], np.uint64))[0])


def _alias(bits, thresh, alias):
    k = ((bits >> 32) * len(thresh)) >> 32
    return k if (bits & 0xFFFFFFFF) < int(thresh[k]) else int(alias[k])


def ihead_sample(tables, spec, z, outs):
    """kernels/induction_heads.hpp's sample_batch, one draw at a time."""
    B, T = outs.shape
    V, k = len(tables.pi), spec.k
    key = splitmix64(np.array([spec.seed], np.uint64))[0]
    stride = 2 * k + T + 1
    with np.errstate(over="ignore"):
        for b in range(B):
            def bits(j):
                return _bits(key, (spec.step * B + b) * stride + j)
            chosen = np.zeros(V, bool)
            trig = []
            for i in range(k):
                if spec.random_triggers:
                    u = (bits(i) >> 11) * 2.0**-53
                    mass = 0.0
                    for t in range(V):
                        if not chosen[t]:
                            mass += tables.pi[t]
                    acc, pick = 0.0, -1
                    for t in range(V):
                        if chosen[t] or tables.pi[t] <= 0:
                            continue
                        acc += tables.pi[t]
                        pick = t
                        if u * mass < acc:
                            break
                    trig.append(pick)
                else:
                    trig.append(int(spec.triggers[i]))
                chosen[trig[-1]] = True
            out = []
            for i in range(k):
                r = bits(k + i)
                out.append(_alias(r, tables.cond_thresh[trig[i]], tables.cond_alias[trig[i]]) if spec.bigram_outputs
                           else ((r >> 32) * V) >> 32)
            count = [0] * k
            z[b, 0] = _alias(bits(2 * k), tables.pi_thresh, tables.pi_alias)
            for t in range(T):
                c = int(z[b, t])
                if c in trig:
                    j = trig.index(c)
                    count[j] += 1
                    z[b, t + 1], outs[b, t] = out[j], count[j]
                else:
                    z[b, t + 1] = _alias(bits(2 * k + 1 + t), tables.cond_thresh[c], tables.cond_alias[c])
                    outs[b, t] = 0


def _softmax_causal(S):
    T = S.shape[-1]
    S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
    S = np.exp(S - S.max(-1, keepdims=True))
    return S / S.sum(-1, keepdims=True)


def _forward(w, z):
    """Every position of every sequence: the activations the backward pass needs."""
    w = w._replace(**{k: np.asarray(a, ref.F) for k, a in w._asdict().items()})
    T, d = z.shape[1] - 1, w.wE.shape[1]
    s = 1.0 / np.sqrt(d)
    X = w.wE[z[:, :T]] + w.P[:T]
    B1 = _softmax_causal(np.einsum("btd,bsd->bts", X, X @ w.WK1.T) * s)  # s_ts = x_t . (W_K1 x_s)
    V1 = X @ w.WV1.T
    H1 = X + (B1 @ V1) @ w.WO1.T
    K2 = H1 @ w.WK2.T
    B2 = _softmax_causal(np.einsum("btd,bsd->bts", H1, K2) * s)
    V2 = H1 @ w.WV2.T
    A2 = B2 @ V2
    H2 = H1 + A2 @ w.WO2.T
    return dict(w=w, s=s, X=X, B1=B1, V1=V1, H1=H1, K2=K2, B2=B2, V2=V2, A2=A2, H2=H2, Xi=H2 @ w.WU.T)


def _mask(rows, B, T):
    m = np.zeros((B, T), bool)
    for b in range(B):
        m[b, rows.idx[rows.ptr[b]:rows.ptr[b + 1]]] = True
    return m


def ihead_rows_forward(weights, z, rows, Hr, A2):
    f = _forward(weights, z)
    m = _mask(rows, *f["H1"].shape[:2])
    Hr[...] = f["H1"][m]
    A2[...] = f["A2"][m]


def _softmax_backward(B, dB):
    return B * (dB - (B * dB).sum(-1, keepdims=True))


def ihead_loss_grads(weights, z, rows, weight, grads):
    f = _forward(weights, z)
    w, s, X, H1, H2 = f["w"], f["s"], f["X"], f["H1"], f["H2"]
    B, T = X.shape[:2]
    m = _mask(rows, B, T)
    y = z[:, 1:]
    Xi = f["Xi"]
    lse = np.log(np.exp(Xi - Xi.max(-1, keepdims=True)).sum(-1)) + Xi.max(-1)
    zy = np.take_along_axis(Xi, y[..., None], -1)[..., 0]
    loss = float(weight * ((lse - zy) * m).sum())
    G = np.exp(Xi - lse[..., None])
    np.put_along_axis(G, y[..., None], np.take_along_axis(G, y[..., None], -1) - 1.0, -1)
    G *= (weight * m)[..., None]
    dH2 = G @ w.WU
    out = {"WU": np.einsum("btv,btd->vd", G, H2), "WO2": np.einsum("bti,btj->ij", dH2, f["A2"])}
    # layer 2: S2 = H1 K2^T s, K2 = H1 W_K2^T, A2 = B2 V2, V2 = H1 W_V2^T
    dA2 = dH2 @ w.WO2
    dB2 = dA2 @ np.swapaxes(f["V2"], 1, 2)
    dV2 = np.swapaxes(f["B2"], 1, 2) @ dA2
    dS2 = _softmax_backward(f["B2"], dB2) * s
    out["WK2"] = np.einsum("bts,bti,bsj->ij", dS2, H1, H1)
    dH1 = dH2 + dV2 @ w.WV2 + dS2 @ f["K2"] + np.swapaxes(dS2, 1, 2) @ H1 @ w.WK2
    # layer 1: H1 = X + B1 V1 W_O1^T, S1 = X W_K1 X^T s
    dA1 = dH1 @ w.WO1
    dB1 = dA1 @ np.swapaxes(f["V1"], 1, 2)
    dV1 = np.swapaxes(f["B1"], 1, 2) @ dA1
    dS1 = _softmax_backward(f["B1"], dB1) * s
    out["WK1"] = np.einsum("bts,bti,bsj->ij", dS1, X, X)
    dX = dH1 + dV1 @ w.WV1 + dS1 @ X @ w.WK1.T + np.swapaxes(dS1, 1, 2) @ X @ w.WK1
    dwE = np.zeros_like(w.wE)
    np.add.at(dwE, z[:, :T], dX)
    out["wE"] = dwE
    for name in grads._fields:
        g = getattr(grads, name)
        if g is not None:
            g[...] = out[name]
    return loss


def ihead_wo2_grads(Hr, A2, WU, y, Ws, weight, G, loss):
    """Run r's memory Q = Hr + A2 W_r read out through W_U: G[r] = A2^T H, H the softmax-CE
    gradient weight (softmax(Q W_U^T) - e_y) W_U; loss[r] = weight * sum of the CEs."""
    Hr, A2, WU = (np.asarray(a, ref.F) for a in (Hr, A2, WU))
    rows = np.arange(len(y))
    for r in range(len(Ws)):
        Z = (Hr + A2 @ np.asarray(Ws[r], ref.F)) @ WU.T
        lse = np.log(np.exp(Z - Z.max(1, keepdims=True)).sum(1)) + Z.max(1)
        P = np.exp(Z - lse[:, None])
        P[rows, y] -= 1.0
        G[r] = A2.T @ (weight * (P @ WU))
        loss[r] = weight * (lse - Z[rows, y]).sum()
