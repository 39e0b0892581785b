"""Scan and Snap's kernels (kernels/scansnap.hpp, train_scansnap.hpp) on the numba backend."""

import math

import numpy as np
from numba import njit

from ..backends.numba_cpu import alias_draw, bounded_index, draw_bits, driver, interruptible, optimizer_step, splitmix64


@njit(cache=True)
def _ss_sample(fq, fn, fptr, ftok, fthr, falias, stok, star, use_seq, key, step, B, L, M, count, hq, hn, hlen,
               htok, hcnt, ctx):
    """sample_batch: the histograms of step's batch (row b at b * (L - 1), tokens ascending)."""
    cap = L - 1
    for b in range(B):
        base = (np.uint64(step) * np.uint64(B) + np.uint64(b)) * np.uint64(L)
        pick = draw_bits(key, base)
        if use_seq:
            i = bounded_index(pick, star.shape[0])
            for j in range(cap):
                ctx[j] = stok[i, j]
            hq[b], hn[b] = stok[i, L - 1], star[i]
        else:
            f = bounded_index(pick, fq.shape[0])
            p0, s = fptr[f], fptr[f + 1] - fptr[f]
            for j in range(1, L):
                k = alias_draw(draw_bits(key, base + np.uint64(j)), fthr[p0:p0 + s], falias[p0:p0 + s])
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
    train_scansnap.hpp; the loss of a step taken goes to loss_out. Returns the loss."""
    data, hist, work, opt, params, out = ctx
    fq, fn, fptr, ftok, fprob, fthr, falias, stok, star, use_seq, population, B, L, seed, start = data
    hq, hn, hstart, hlen, htok, hcnt, count, ctxbuf, weight = hist
    r, g, dz, u, GY, GZ, ty, tz, computed, batch_loss = work
    Yt, Z = params[0], params[1]
    loss_out = out[1]
    if computed[0] != i:
        if not population:
            _ss_sample(fq, fn, fptr, ftok, fthr, falias, stok, star, use_seq, splitmix64(seed), start + i, B, L,
                       Z.shape[0], count, hq, hn, hlen, htok, hcnt, ctxbuf)
        batch_loss[0] = _ss_forward_backward(Yt, Z, hq, hn, hstart, hlen, htok, hcnt, weight, r, g, dz, u)
        if i < len(loss_out):  # empty where each step's loss is not kept
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
    optimizer_step(kind, Yt, GY, mY, vY, lr_y, 1.0, mu, b1, b2, eps, at)  # zero outside the touched rows
    optimizer_step(kind, Z, GZ, mZ, vZ, lr_z, 1.0, mu, b1, b2, eps, at)
    for l in range(M):
        if ty[l]:
            GY[l] = 0.0
            ty[l] = False
        if tz[l]:
            GZ[l] = 0.0
            tz[l] = False
    computed[0] = -1
    return True


_drive_scansnap = driver("scansnap", _ss_record, _ss_step)


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
        res = interruptible(_drive_scansnap, int(spec.steps), (data, hist, work, opt, params, outs),
                            progress=lambda r: (int(r[1]), int(r[2])))
    return tuple(int(x) for x in res)
