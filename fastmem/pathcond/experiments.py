"""PathCond's experiments on data that ships with scikit-learn (no download is possible on the
machines this runs on): two moons, and the paper's Fig. 2 question on ``load_digits``. PyTorch
trains the networks; fastmem rescales them. The depth experiment is registered with the sweep
runner as "pathcond-depth"."""

import time

import numpy as np

from .. import _validate as v
from ..sweeps import Experiment, register
from ..sweeps.experiment import integer_key, number_key
from .solve import rescale

METHODS = ("baseline", "pathcond", "enorm")


def mlp(sizes, seed, init="torch"):
    """A PyTorch nn.Sequential MLP, ReLU between layers: PyTorch's default init ("torch"), or He
    (Kaiming normal, fan-in) weights with small uniform biases ("he": deep ReLU nets without
    BatchNorm train only so)."""
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*layers)
    if init == "he":
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                torch.nn.init.uniform_(layer.bias, -0.01, 0.01)
    return model


def prepare(model, method, sweeps=10, backend=None):
    if method not in METHODS:
        v.fail("method", f"one of {METHODS}", repr(method))
    if method != "baseline":
        rescale(model, sweeps=sweeps, method=method, backend=backend)
    return model


def moons_losses(seed, method, epochs=3000, lr=1e-2, n_samples=1000, noise=0.1):
    """The authors' two-moons demo: MLP [2, 64, 64, 64, 64, 2], full-batch SGD at lr 1e-2; the
    training loss at every epoch (epoch 0 first). make_moons(n_samples, noise, random_state=seed)."""
    import torch
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    model = prepare(mlp([2, 64, 64, 64, 64, 2], seed), method)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = np.empty(epochs + 1)
    for e in range(epochs + 1):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        losses[e] = loss.item()
        if e < epochs:
            loss.backward()
            opt.step()
    return losses


def digits_run(c, backend=None):
    """Epochs of minibatch SGD until 99% training accuracy on load_digits (pixels / 16) for an
    MLP 64-width^depth-10 with He init, rescaled first by ``method``; None past max_epochs."""
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    X, y = torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target)
    model = prepare(mlp([64] + [c["width"]] * c["depth"] + [10], c["seed"], init="he"), c["method"], backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=c["lr"])
    gen = torch.Generator().manual_seed(c["seed"])
    accuracy, reached = 0.0, None
    for epoch in range(1, c["max_epochs"] + 1):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), c["batch_size"]):
            idx = perm[i:i + c["batch_size"]]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            accuracy = float((model(X).argmax(1) == y).float().mean())
        if accuracy >= 0.99:
            reached = epoch
            break
    n_params = sum(p.numel() for p in model.parameters())
    return {"epochs": float("nan") if reached is None else float(reached), "accuracy": accuracy,
            "n_params": n_params}


def _digits_run_group(configs, backend=None, trajectory=0):
    import torch

    torch.set_num_threads(1)  # the sweep runs one configuration per worker process
    out = []
    for c in configs:
        t0 = time.perf_counter()
        row = digits_run(c, backend)
        out.append(({"status": "ok", **row, "seconds": time.perf_counter() - t0, "message": ""}, None))
    return out


DEPTH = register(Experiment(
    name="pathcond-depth",
    keys={"depth": integer_key(1), "width": integer_key(1), "seed": integer_key(0),
          "method": (lambda x: x in METHODS, f"one of {METHODS}"),
          "lr": number_key(0, strict=True),
          "batch_size": integer_key(1), "max_epochs": integer_key(1)},
    defaults={"width": 500, "lr": 1e-2, "batch_size": 128, "max_epochs": 60},
    columns=("status", "epochs", "accuracy", "n_params", "seconds", "message"),
    run_group=_digits_run_group, float_keys=("lr",),
    kernels=lambda ax: ("pathcond_solve",) if set(ax["method"]) - {"baseline"} else (),
    order_key=lambda c: (0, (-c["depth"], c["seed"], c["method"])),
    cost=lambda c: c["depth"] * c["width"] ** 2, module=__name__))
