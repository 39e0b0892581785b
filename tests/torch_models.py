"""The three models of the scaling-law grid in plain PyTorch (autograd, torch.optim), written
independently of fastmem, for tests and benchmarks only (needs the optional torch)."""

import numpy as np
import torch


def train(model, E, U, W, p, y, tokens, optimizer, lr, d, layernorm):
    """One run on the given minibatches (steps x b token ids); returns the trained (E, U, W)."""
    E = torch.tensor(E, requires_grad=model != "matrix")
    U = torch.tensor(U, requires_grad=model != "matrix")
    W = torch.tensor(W, requires_grad=model != "exponential")
    y = torch.from_numpy(np.array(y))  # a writeable copy of the (read-only) targets
    params = [t for t in (E, U, W) if t.requires_grad]
    if optimizer == "adam":  # betas (0, 0); lr / d for W and lr / sqrt(d) for E and U (docs/model.md)
        groups = [{"params": [W], "lr": lr / d}] if W.requires_grad else []
        if model != "matrix":
            groups.append({"params": [E, U], "lr": lr / d ** 0.5})
        opt = torch.optim.Adam(groups, betas=(0.0, 0.0), eps=1e-8)
    else:
        opt = torch.optim.SGD(params, lr=lr)
    for x in torch.as_tensor(tokens):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(scores(model, E, U, W, x, layernorm), y[x])
        loss.backward()
        opt.step()
    return E.detach().numpy(), U.detach().numpy(), W.detach().numpy()


def scores(model, E, U, W, x, layernorm):
    h = torch.relu(E[x]) if model == "exponential" else E[x] @ W
    if layernorm:
        h = h / torch.sqrt((h * h).sum(dim=1, keepdim=True) + 1e-6)
    return h @ U.T


def error(model, E, U, W, p, y, layernorm):
    """sum of p(x) over tokens whose argmax score is wrong."""
    with torch.no_grad():
        z = scores(model, torch.as_tensor(E), torch.as_tensor(U), torch.as_tensor(W),
                   torch.arange(len(p)), layernorm)
        wrong = z.argmax(dim=1).numpy() != np.asarray(y)
    return float(p[wrong].sum())
