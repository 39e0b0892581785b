"""An independent PyTorch implementation of PathCond's objective and solver, written for the
tests from docs/pathcond.md (the authors' per-neuron loop: small tensor operations for each
neuron, index sets built from the module's parameters), and diag G by autograd."""

import copy

import torch


def diag_G(model, input_shape):
    """diag G by the one-backward trick with autograd: squared parameters, an all-ones input,
    the gradient of the outputs' sum with respect to the squared parameters."""
    model = copy.deepcopy(model).double()
    sq = {n: (p.detach() ** 2).requires_grad_(True) for n, p in model.named_parameters()}
    out = torch.func.functional_call(model, sq, (torch.ones((1,) + tuple(input_shape), dtype=torch.float64),))
    grads = torch.autograd.grad(out.sum(), list(sq.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def _index_sets(model):
    """[(incoming indices, outgoing indices)] per hidden neuron, flat layout (weight, bias per layer)."""
    params = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    offsets, off = [], 0
    for m in params:
        w = off
        off += m.weight.numel()
        b = None
        if m.bias is not None:
            b = off
            off += m.bias.numel()
        offsets.append((w, b))
    sets = []
    for k, m in enumerate(params[:-1]):
        nxt = params[k + 1]
        W = torch.arange(m.weight.numel()).reshape(m.weight.shape) + offsets[k][0]
        Wn = torch.arange(nxt.weight.numel()).reshape(nxt.weight.shape) + offsets[k + 1][0]
        H = m.weight.shape[0]
        if isinstance(nxt, torch.nn.Linear):
            Wn = Wn.reshape(Wn.shape[0], H, -1)
        for h in range(H):
            inc = W[h].reshape(-1)
            if offsets[k][1] is not None:
                inc = torch.cat([inc, torch.tensor([offsets[k][1] + h])])
            sets.append((inc, Wn[:, h].reshape(-1)))
    return sets, off


def solve(model, input_shape, sweeps=10, tol=1e-2, G=None):
    """z per hidden neuron (layer order) and F per sweep, one neuron at a time as the authors'
    loop does: the running G' = G e^{Bz} and its total updated in place, a few small tensor
    operations per neuron (sums over its incoming and outgoing sets, the root, two scalings)."""
    G = diag_G(model, input_shape) if G is None else G
    sets, P = _index_sets(model)
    Gp = G.clone()
    z = torch.zeros(len(sets), dtype=torch.float64)
    A = torch.tensor([len(i) - len(o) for i, o in sets], dtype=torch.float64)
    log0 = torch.log(G).sum()

    def F():
        return float(P * torch.log(Gp.sum() / P) - (log0 - (A * z).sum()))

    objective = [F()]
    for _ in range(sweeps):
        moved, S = 0.0, Gp.sum()
        for h, (inc, out) in enumerate(sets):
            s_in, s_out = Gp[inc].sum(), Gp[out].sum()
            D = S - s_in - s_out
            a, b, c = s_out * (A[h] + P), D * A[h], s_in * (A[h] - P)
            y = (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)
            S = D + s_out * y + s_in / y
            Gp[inc] /= y
            Gp[out] *= y
            dz = torch.log(y)
            z[h] += dz
            moved += float(abs(dz))
        objective.append(F())
        if moved < tol:
            break
    return z.numpy(), objective
