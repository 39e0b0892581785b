"""A plain PyTorch implementation of birth's two-layer attention-only transformer
(ihead_basic_model.py with its defaults, as docs/transformer.md states it): nn.Linear layers,
autograd, torch.optim.SGD. For tests only: the independent check of fastmem's kernels."""

import math

import torch


class TwoLayer(torch.nn.Module):
    def __init__(self, weights, dtype=torch.float64):
        super().__init__()
        w = {k: torch.tensor(a, dtype=dtype) for k, a in weights._asdict().items()}
        self.wE = torch.nn.Parameter(w["wE"])
        self.register_buffer("P", w["P"])
        d = w["wE"].shape[1]
        for name in ("WK1", "WV1", "WO1", "WK2", "WV2", "WO2", "WU"):
            lin = torch.nn.Linear(*w[name].shape[::-1], bias=False).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(w[name])
            setattr(self, name, lin)
        self.scale = 1.0 / math.sqrt(d)

    def attention(self, h, wk, wv, wo):
        T = h.shape[1]
        scores = h @ wk(h).transpose(1, 2) * self.scale
        mask = torch.triu(torch.full((T, T), float("-inf"), dtype=h.dtype), diagonal=1)
        return wo(torch.softmax(scores + mask, dim=-1) @ wv(h))

    def forward(self, x):
        h = self.wE[x] + self.P[: x.shape[1]]
        h = h + self.attention(h, self.WK1, self.WV1, self.WO1)
        h = h + self.attention(h, self.WK2, self.WV2, self.WO2)
        return self.WU(h)


def loss(model, batch, head=True):
    """Mean cross-entropy over the batch's in-context targets (outs >= 2), pooled, or all."""
    x, y, outs = (torch.as_tensor(a) for a in (batch.x, batch.y, batch.outs))
    logits = model(x)
    mask = outs >= 2 if head else torch.ones_like(outs, dtype=torch.bool)
    return torch.nn.functional.cross_entropy(logits[mask], y[mask])


PARAMS = {"wE": lambda m: m.wE, "WK1": lambda m: m.WK1.weight, "WK2": lambda m: m.WK2.weight,
          "WO2": lambda m: m.WO2.weight, "WU": lambda m: m.WU.weight}


def grads(model, batch, names, head=True):
    model.zero_grad()
    L = loss(model, batch, head)
    L.backward()
    return L.item(), {k: PARAMS[k](model).grad.numpy().copy() for k in names}


def train(model, batches, names, lr, momentum=0.0, weight_decay=1e-4):
    for p in model.parameters():
        p.requires_grad_(False)
    params = [PARAMS[k](model) for k in names]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for b in batches:
        opt.zero_grad()
        L = loss(model, b)
        L.backward()
        opt.step()
        losses.append(L.item())
    return losses
