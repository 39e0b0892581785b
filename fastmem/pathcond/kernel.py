"""diag G of the path-lifting kernel by one backward pass, the objective F, and the
function-preserving update theta' = theta * exp(-B z / 2)."""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _validate as v
from .._interrupts import deferred_ctrl_c
from .layers import Add, AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, pool_weights
from .network import _shape, _to_numpy


def _im2col(a, kh, kw, stride, pad):
    """(C, H, W) -> (C * kh * kw, Ho * Wo): the windows a convolution reads, as columns."""
    C = a.shape[0]
    ap = np.pad(a, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    win = sliding_window_view(ap, (kh, kw), axis=(1, 2))[:, ::stride[0], ::stride[1]]  # (C, Ho, Wo, kh, kw)
    Ho, Wo = win.shape[1], win.shape[2]
    return np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2)).reshape(C * kh * kw, Ho * Wo), (Ho, Wo)


def _col2im(cols, shape, kh, kw, stride, pad, out_hw):
    """The adjoint of _im2col: columns (C * kh * kw, Ho * Wo) summed back into (C, H, W)."""
    C, H, W = shape
    Ho, Wo = out_hw
    cols = cols.reshape(C, kh, kw, Ho, Wo)
    g = np.zeros((C, H + 2 * pad[0], W + 2 * pad[1]))
    for u in range(kh):
        for w in range(kw):
            g[:, u:u + stride[0] * (Ho - 1) + 1:stride[0], w:w + stride[1] * (Wo - 1) + 1:stride[1]] += cols[:, u, w]
    return g[:, pad[0]:pad[0] + H, pad[1]:pad[1] + W]


def _maxpool(a, la):
    """Max-pooling of non-negative (C, H, W) values; the flat index of each window's maximum."""
    (kh, kw), st, pad = la.kernel, la.stride, la.padding
    ap = np.pad(a, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])), constant_values=-np.inf)
    idx = np.arange(ap[0].size).reshape(ap.shape[1:])
    win = sliding_window_view(ap, (kh, kw), axis=(1, 2))[:, ::st[0], ::st[1]]
    iw = sliding_window_view(idx, (kh, kw))[::st[0], ::st[1]]
    C, Ho, Wo = win.shape[:3]
    flat = win.reshape(C, Ho, Wo, kh * kw)
    arg = flat.argmax(axis=-1)
    picked = np.take_along_axis(iw.reshape(1, Ho, Wo, kh * kw).repeat(C, 0), arg[..., None], -1)[..., 0]
    return np.take_along_axis(flat, arg[..., None], -1)[..., 0], (picked, ap.shape)


def diag_G(model, input_shape=None):
    """diag G (P,) float64 of a ReLU network, in the flat layout (``Network.split`` gives it per
    layer): G_ii = sum over the paths through parameter i of the product of the other weights of
    the path (an average pooling's 1 / size and a skip's 1 among them), squared. One forward
    pass with every weight squared on an all-ones input (every ReLU then passes its input) and
    one backward pass from the sum of the outputs: G_ii is the derivative with respect to
    theta_i^2; a residual addition sums its branches forward and hands the gradient to each.
    Dense layers are matrix-vector products (BLAS), convolutions im2col products; memory beyond
    the parameters O(P + activations)."""
    from .network import as_network

    net = as_network(model, input_shape)
    (offsets, P) = net.layout()
    _check_memory(net, P)
    if not isinstance(net.params()[0].weight, np.ndarray):
        return _diag_G_torch(net)
    at = dict(zip((id(la) for la in net.params()), offsets))
    G = np.empty(P)  # filled layer by layer, backward: each slice written once
    x0 = np.ones(net.shapes[0][0])
    acts, saved, sq = [], [], {}

    def read(j):
        return x0 if j < 0 else acts[j]

    for i, (la, (shape_in, shape_out)) in enumerate(zip(net.layers, net.shapes)):
        a = read(net.inputs[i][0])
        s = None
        if isinstance(la, (Dense, Conv2d)):
            W2 = np.square(_to_numpy(la.weight), dtype=np.float64)
            b2 = None if la.bias is None else np.square(_to_numpy(la.bias), dtype=np.float64)
            sq[i] = W2
            if isinstance(la, Dense):
                s = a
                a = W2 @ a + (0.0 if b2 is None else b2)
            else:
                kh, kw = W2.shape[2:]
                cols, hw = _im2col(a, kh, kw, la.stride, la.padding)
                s = (cols, hw)
                a = (W2.reshape(W2.shape[0], -1) @ cols).reshape(shape_out)
                if b2 is not None:
                    a += b2[:, None, None]
        elif isinstance(la, MaxPool2d):
            a, s = _maxpool(a, la)
        elif isinstance(la, (AvgPool2d, AdaptiveAvgPool2d)):
            s = [np.square(A) for A in pool_weights(la, shape_in)]
            a = s[0] @ a @ s[1].T
        elif isinstance(la, Flatten):
            a = a.reshape(-1)
        elif isinstance(la, Add):
            a = sum(read(j) for j in net.inputs[i])
        acts.append(a)
        saved.append(s)
    grads = [None] * len(net.layers)
    grads[-1] = np.ones(net.shapes[-1][1])
    for i in reversed(range(len(net.layers))):
        la, (shape_in, _), s, g = net.layers[i], net.shapes[i], saved[i], grads[i]
        acts[i] = grads[i] = None  # what the backward has passed is freed as it goes
        if isinstance(la, (Dense, Conv2d)):
            W2 = sq.pop(i)
            w_off, b_off = at[id(la)]
            out = G[w_off:w_off + W2.size].reshape(W2.shape[0], -1)
        if isinstance(la, Dense):
            np.multiply.outer(g, s, out=out)
            if b_off >= 0:
                G[b_off:b_off + g.size] = g
            g = W2.T @ g
        elif isinstance(la, Conv2d):
            cols, hw = s
            gm = g.reshape(W2.shape[0], -1)
            np.matmul(gm, cols.T, out=out)
            if b_off >= 0:
                G[b_off:b_off + W2.shape[0]] = gm.sum(axis=1)
            g = _col2im(W2.reshape(W2.shape[0], -1).T @ gm, shape_in, W2.shape[2], W2.shape[3], la.stride,
                        la.padding, hw)
        elif isinstance(la, MaxPool2d):
            picked, padded = s
            gp = np.zeros((padded[0], padded[1] * padded[2]))
            C = padded[0]
            np.add.at(gp, (np.arange(C)[:, None], picked.reshape(C, -1)), g.reshape(C, -1))
            pad = la.padding
            g = gp.reshape(padded)[:, pad[0]:pad[0] + shape_in[1], pad[1]:pad[1] + shape_in[2]]
        elif isinstance(la, (AvgPool2d, AdaptiveAvgPool2d)):
            g = s[0].T @ g @ s[1]
        elif isinstance(la, Flatten):
            g = g.reshape(shape_in)
        for j in net.inputs[i]:  # a new array per sum: a gradient handed on is never written in place
            if j >= 0:
                grads[j] = g if grads[j] is None else grads[j] + g
    return G


def _diag_G_torch(net):
    """diag G of a PyTorch network by the same trick with torch operations, on the parameters'
    device (float64 where it has it): the squared parameters as leaves, one forward from ones,
    one backward; G comes to the host once, whole, never a parameter at a time."""
    import torch
    import torch.nn.functional as F

    first = net.params()[0].weight
    dtype = torch.float32 if first.device.type == "mps" else torch.float64
    leaves = []

    def square(a):  # one new tensor per parameter (fresh memory is slow to touch on some machines)
        leaf = a.detach().to(dtype, copy=True).square_().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    def const(A):
        return torch.from_numpy(np.square(A)).to(device=first.device, dtype=dtype)

    with torch.enable_grad():
        acts = []
        x0 = torch.ones(net.shapes[0][0], dtype=dtype, device=first.device)
        for i, (la, (shape_in, _)) in enumerate(zip(net.layers, net.shapes)):
            ins = [x0 if j < 0 else acts[j] for j in net.inputs[i]]
            a = ins[0]
            if isinstance(la, Dense):
                w2 = square(la.weight)
                a = w2 @ a + (square(la.bias) if la.bias is not None else 0.0)
            elif isinstance(la, Conv2d):
                w2 = square(la.weight)
                a = F.conv2d(a[None], w2, square(la.bias) if la.bias is not None else None, la.stride, la.padding)[0]
            elif isinstance(la, MaxPool2d):  # the backward goes to the all-ones forward's own maxima
                a = F.max_pool2d(a[None], la.kernel, la.stride, la.padding)[0]
            elif isinstance(la, (AvgPool2d, AdaptiveAvgPool2d)):
                Ah, Aw = pool_weights(la, shape_in)
                a = const(Ah) @ a @ const(Aw).T
            elif isinstance(la, Flatten):
                a = a.reshape(-1)
            elif isinstance(la, Add):
                a = sum(ins[1:], ins[0])
            acts.append(a)
        acts[-1].sum().backward()
    grads = [leaf.grad.reshape(-1) for leaf in leaves]
    if first.device.type == "cpu":  # straight into the result: no copy of G in between
        G = np.empty(sum(g.numel() for g in grads))
        torch.cat(grads, out=torch.from_numpy(G))
        return G
    return torch.cat(grads).cpu().numpy().astype(np.float64, copy=False)


def _check_memory(net, P):
    """Refuse, before any allocation, a diag G whose float64 arrays cannot fit: G and the squared
    weights (2P), and what the forward pass keeps per layer (its input; a convolution's im2col
    columns, C_in kh kw x H_out W_out: a 4096 x 4096 input makes gigabytes of them)."""
    kept = 0
    for la, (shape_in, shape_out) in zip(net.layers, net.shapes):
        if isinstance(la, Conv2d):
            kh, kw = _shape(la.weight)[2:]
            kept += shape_in[0] * kh * kw * shape_out[1] * shape_out[2]
        kept += math.prod(shape_in)
    conv = isinstance(net.params()[0], Conv2d)
    v.fits_in_memory("input_shape" if conv else "model", 8 * (2 * P + kept),
                     "diag G's float64 arrays (the parameters twice, the activations, im2col columns)",
                     f"input {net.shapes[0][0]} through {P:,} parameters")


def _check_G(G):
    G = np.ascontiguousarray(G, dtype=np.float64)
    if G.ndim != 1 or G.size == 0 or not (G.min() >= 0 and G.max() < np.inf) or not G.any():  # NaN fails
        v.fail("G", "a 1-D vector of finite non-negative values, some positive (diag G of a network)",
               f"shape {G.shape}, {int((~(G >= 0)).sum())} entries not >= 0, {int((G > 0).sum())} positive"
               if G.ndim == 1 else f"shape {G.shape}")
    return G


def objective(model_or_G, z=None, input_shape=None, groups=None):
    """F(z) = P log(mean_i G'_i) - sum_i log G'_i with G' = G e^{Bz}: P times the log of the
    ratio of the arithmetic to the geometric mean of diag G' (0 when all are equal), over the
    P entries with G_i > 0 (an entry with G_i = 0 is on no path). ``model_or_G`` is a network
    (diag G computed) or diag G itself (then ``groups`` from Network.groups()); z (one per
    rescaled neuron or channel) defaults to 0."""
    if isinstance(model_or_G, np.ndarray):
        G = _check_G(model_or_G)
        if groups is None and z is not None:
            v.fail("groups", "the network's groups (Network.groups()) with diag G and z", None)
    else:
        from .network import as_network

        net = as_network(model_or_G, input_shape)
        G, groups = _check_G(diag_G(net)), net.groups()
    live = G > 0
    logG = np.log(G[live])
    if z is not None:
        logG += bz(groups, np.asarray(z, dtype=np.float64), G.size)[live]
    P = logG.size
    shift = logG.max()  # mean of e^{logG} without overflow
    return float(P * (np.log(np.mean(np.exp(logG - shift))) + shift) - logG.sum())


def bz(groups, z, P):
    """The vector B z (P,): -z_h on neuron h's incoming parameters, +z_h on its outgoing ones."""
    groups = np.asarray(groups, dtype=np.int64).reshape(-1, 7)
    H = int(groups[:, 0].sum())
    if z.shape != (H,):
        v.fail("z", f"shape ({H},), one per hidden neuron or channel", f"shape {z.shape}")
    out, start = np.zeros(P), 0
    for Hn, ino, row, bo, oo, outer, inner in groups:
        zl = z[start:start + Hn]
        out[ino:ino + Hn * row] -= np.repeat(zl, row)
        if bo >= 0:
            out[bo:bo + Hn] -= zl
        out[oo:oo + outer * Hn * inner] += np.tile(np.repeat(zl, inner), outer)
        start += Hn
    return out


def apply_rescaling(net, z):
    """theta' = theta * exp(-B z / 2) on the network's own arrays, in place: hidden neuron h's
    incoming weights and bias times e^{z_h / 2}, its outgoing weights times e^{-z_h / 2}.
    Whole or not at all: every new array is computed and checked (float, writeable, finite)
    before the first is written."""
    z = np.asarray(z, dtype=np.float64)
    if not np.isfinite(z).all():
        v.fail("z", "finite values", f"{int((~np.isfinite(z)).sum())} NaN or Inf")
    factors, start = {}, 0  # id(array) -> [array, name, factor]

    def scale(i, what, f):
        a = getattr(net.layers[i], what)
        if a is not None:
            entry = factors.setdefault(id(a), [a, f"{net.layers[i].name}.{what} (layer {i})",
                                               np.ones((1,) * len(_shape(a)))])
            entry[2] = entry[2] * f  # a weight between two rescaled layers is scaled on both sides

    for r in net._rescaled:
        la, nxt = net.layers[r.producer], net.layers[r.consumer]
        H = _shape(la.weight)[0]
        with np.errstate(over="ignore"):
            lam = np.exp(z[start:start + H] / 2)
        start += H
        inv = 1.0 / lam
        scale(r.producer, "weight", lam.reshape((H,) + (1,) * (len(_shape(la.weight)) - 1)))
        scale(r.producer, "bias", lam)
        for j, inner in r.batchnorms:  # its output proportional to its input: bias and mean scale too
            scale(j, "bias", np.repeat(lam, inner))
            scale(j, "running_mean", np.repeat(lam, inner))
        if isinstance(nxt, Conv2d):
            scale(r.consumer, "weight", inv.reshape(1, H, 1, 1))
        else:  # dense: its inputs are the H neurons, each over its spatial size after a flatten
            scale(r.consumer, "weight", np.repeat(inv, r.inner).reshape(1, H * r.inner))
    new = []
    for a, name, f in factors.values():
        _check_rescalable(a, name)
        b = _scaled(a, f)
        if not _all_finite(b):
            v.fail("z", f"a rescaling that keeps the weights finite ({name} overflows)", "a z too large")
        new.append(b)
    with deferred_ctrl_c() as came:  # Ctrl-C waits until every array is written: whole
        for (a, _, _), b in zip(factors.values(), new):
            _assign(a, b)
    if came[0]:
        raise KeyboardInterrupt


def _check_rescalable(a, name):
    if isinstance(a, np.ndarray):
        if a.dtype.kind != "f":
            v.fail("model", f"float weights (a rescaling multiplies them); {name} is", f"dtype {a.dtype}")
        if not a.flags.writeable:
            v.fail("model", f"writeable weights (rescaled in place); {name} is", "read-only")
    elif not a.is_floating_point():
        v.fail("model", f"float weights (a rescaling multiplies them); {name} is", f"dtype {a.dtype}")


def _scaled(a, factor):
    """a * factor, a new array of a's kind, dtype and device."""
    if isinstance(a, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):
            return a * factor.astype(a.dtype)
    import torch

    with torch.no_grad():
        return a.detach() * torch.from_numpy(np.ascontiguousarray(factor)).to(device=a.device, dtype=a.dtype)


def _all_finite(b):
    return bool(np.isfinite(b).all()) if isinstance(b, np.ndarray) else bool(b.isfinite().all())


def _assign(a, b):
    if isinstance(a, np.ndarray):
        a[...] = b
        return
    import torch

    with torch.no_grad():
        a.copy_(b)

