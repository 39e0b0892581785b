"""PathCond's experiments on data that ships with scikit-learn (no download is possible on the
machines this runs on): two moons, the paper's Fig. 2 question and its CIFAR-10 experiment
(Fig. 3: a convolutional net with BatchNorm) on ``load_digits``. PyTorch trains the networks;
fastmem rescales them. The depth and conv experiments are registered with the sweep runner as
"pathcond-depth" and "pathcond-conv"."""

import time
import warnings

import numpy as np

from .. import _validate as v
from ..sweeps import Experiment, register
from ..sweeps.experiment import integer_key, number_key
from .layers import PathCondWarning
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


# ---- the authors' CIFAR experiment (their Fig. 3: full_conv with BatchNorm), on digits ---------

CONV_METHODS = ("baseline", "pathcond", "enorm", "pathcond-schedule")
CONV_ARCHS = ("full_conv", "resnet18")


def full_conv_widths(width):
    """full_conv's three block widths from the first (the authors' 128, 256, 320)."""
    return width, 2 * width, int(2.5 * width)


def conv_model(arch, width, seed):
    """The network of a pathcond-conv run, for 1 x 8 x 8 digits and 10 classes: the authors'
    full_conv in shape (widths width, 2 width, 2.5 width; theirs 128, 256, 320) or their CIFAR
    ResNet-18 (torchvision's with a 3 x 3 stride-1 stem and no max-pooling; first stage width
    channels, theirs 64), PyTorch's default initialisation as theirs."""
    import torch

    from . import models

    torch.manual_seed(seed)
    if arch == "full_conv":
        return models.full_conv(full_conv_widths(width), in_channels=1, num_classes=10, image=8)
    return models.resnet18(num_classes=10, width=width, in_channels=1, stem="cifar")


def conv_run(c, backend=None):
    """One run of pathcond-conv: minibatch SGD on load_digits (8 x 8 images, pixels / 16), the
    model rescaled as its method says (in eval mode, as the authors' loop does; training in
    training mode): "pathcond" once at the start (10 sweeps), "pathcond-schedule" then again every
    ``every`` epochs (1 sweep; the authors' teleportation schedule), "enorm" after every epoch (the
    authors' ENorm step). Returns the row (with ``rescale_change``: the largest change of the
    outputs in eval mode by the first rescaling, relative to the largest output) and the per-epoch
    curves (training loss, and accuracy on the training set in eval mode)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from .solve import RescaleEvery, rescale_in_eval

    data = load_digits()
    X = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(data.target)
    model = conv_model(c["arch"], c["width"], c["seed"])

    def make():
        return torch.optim.SGD(model.parameters(), lr=c["lr"])

    shape, method, change = (1, 8, 8), c["method"], 0.0
    if method in ("pathcond", "pathcond-schedule"):
        model.eval()
        with torch.no_grad():
            before = model(X[:256])
        rescale_in_eval(model, sweeps=10, input_shape=shape, backend=backend)
        with torch.no_grad():  # the function in eval mode, kept (float32)
            change = float((model(X[:256]) - before).abs().max() / before.abs().max().clamp_min(1e-30))
    helper = None
    if method == "pathcond-schedule":
        helper = RescaleEvery(model, make, every=c["every"], sweeps=1, rescale_at_start=False, input_shape=shape,
                              backend=backend)
    elif method == "enorm":
        helper = RescaleEvery(model, make, every=1, sweeps=1, method="enorm", rescale_at_start=False,
                              input_shape=shape, backend=backend)
    opt = make()
    gen = torch.Generator().manual_seed(c["seed"])
    losses, accuracies, reached = [], [], None
    for epoch in range(c["epochs"]):
        if helper is not None:
            opt = helper.optimizer_for(epoch)
        model.train()
        total, perm = 0.0, torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), c["batch_size"]):
            idx = perm[i:i + c["batch_size"]]
            opt.zero_grad()
            loss = F.cross_entropy(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            accuracies.append(float((model(X).argmax(1) == y).float().mean()))
        losses.append(total / len(X))
        if reached is None and accuracies[-1] >= 0.99:
            reached = epoch + 1
    finite = bool(np.isfinite(losses).all())
    row = {"status": "ok" if finite else "diverged",
           "epochs_to_99": float("nan") if reached is None else float(reached),
           "final_loss": losses[-1], "final_accuracy": accuracies[-1], "rescale_change": change,
           "n_params": sum(p.numel() for p in model.parameters())}
    return row, {"epoch": np.arange(1, len(losses) + 1), "loss": np.array(losses), "accuracy": np.array(accuracies)}


def _conv_run_group(configs, backend=None, trajectory=0):
    import torch

    torch.set_num_threads(1)  # the sweep runs one configuration per worker process
    out = []
    for c in configs:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # BatchNorm and max-pooling, known here: docs/pathcond.md
            warnings.simplefilter("ignore", PathCondWarning)
            row, curves = conv_run(c, backend)
        out.append(({**row, "seconds": time.perf_counter() - t0, "message": ""}, curves if trajectory else None))
    return out


CONV = register(Experiment(
    name="pathcond-conv",
    keys={"arch": (lambda x: x in CONV_ARCHS, f"one of {CONV_ARCHS}"), "width": integer_key(1),
          "seed": integer_key(0), "method": (lambda x: x in CONV_METHODS, f"one of {CONV_METHODS}"),
          "lr": number_key(0, strict=True), "batch_size": integer_key(1), "epochs": integer_key(1),
          "every": integer_key(1)},
    defaults={"arch": "full_conv", "width": 32, "lr": 3e-3, "batch_size": 16, "epochs": 20, "every": 10},
    columns=("status", "epochs_to_99", "final_loss", "final_accuracy", "rescale_change", "n_params", "seconds",
             "message"),
    run_group=_conv_run_group, float_keys=("lr",),
    kernels=lambda ax: ("pathcond_solve",) if set(ax["method"]) - {"baseline"} else (),
    order_key=lambda c: (0, (c["arch"], c["seed"], c["method"])),
    cost=lambda c: c["epochs"] * c["width"] ** 2 * (4 if c["arch"] == "resnet18" else 1), module=__name__))
