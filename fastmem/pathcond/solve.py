"""Rescaling a network: PathCond's solver (or ENorm) and the function-preserving update."""

from dataclasses import dataclass

import numpy as np

from .. import _validate as v
from ..backends import get
from .kernel import _check_G, apply_rescaling, diag_G, objective
from .network import as_network

METHODS = ("pathcond", "enorm")


@dataclass
class Rescaling:
    """The result of :func:`rescale`.

    z : (H,) float64, one per rescaled neuron or channel (lambda_h = e^{z_h / 2}), in the order of
        ``network.rescaled()``
    z_layers : the same, one array per rescaled layer
    objective : F before the first sweep and after each (PathCond); F before and after (ENorm;
        NaN where diag G is not finite and non-negative)
    sweeps : sweeps done
    method : "pathcond" or "enorm"
    network : the fastmem.pathcond.Network rescaled (its arrays are the caller's when inplace)
    """

    z: np.ndarray
    z_layers: list
    objective: np.ndarray
    sweeps: int
    method: str
    network: object

    @property
    def am_gm(self):
        """The ratio of the arithmetic to the geometric mean of diag G, before and after:
        exp(F / P)."""
        return np.exp(self.objective[[0, -1]] / self.network.n_params)


def solve(model, sweeps=10, tol=1e-2, method="pathcond", backend=None, input_shape=None, G=None):
    """z for ``model`` without changing it: (z, objective, sweeps done, network)."""
    if method not in METHODS:
        v.fail("method", f"one of {METHODS}", repr(method))
    net = as_network(model, input_shape)
    # the objective is kept per sweep: bounded before it is allocated (the authors run 10)
    sweeps = v.positive_int("sweeps", sweeps, allow_zero=True, below=10**6)
    tol = v.positive_float("tol", tol, allow_zero=True)
    groups = net.groups()
    G = diag_G(net) if G is None else np.asarray(G, dtype=np.float64)
    if G.shape != (net.n_params,):
        v.fail("G", f"shape ({net.n_params},), diag G of this network", f"shape {G.shape}")
    if method == "pathcond":
        G = _check_G(G)
    # ENorm balances sums of theta^2: zero entries are fine where no neuron's sums vanish
    weights = G if method == "pathcond" else np.square(net.flat())
    z = np.zeros(int(groups[:, 0].sum()))
    obj = np.empty(sweeps + 1) if method == "pathcond" else None
    done = get(backend, kernel="pathcond_solve").pathcond_solve(weights, groups, z, obj, tol, sweeps,
                                                                   method == "enorm")
    if not np.isfinite(z).all():
        v.fail("model", "hidden neurons with non-zero incoming and outgoing weights (ENorm balances their norms)",
               f"{int((~np.isfinite(z)).sum())} neurons with all-zero incoming or outgoing weights")
    if obj is not None:
        obj = obj[:done + 1]
    elif np.isfinite(G).all() and (G >= 0).all() and G.any():  # ENorm: PathCond's F before and after
        obj = np.array([objective(G), objective(G, z, groups=groups)])
    else:
        obj = np.full(2, np.nan)
    return z, obj, int(done), net


def rescale(model, sweeps=10, tol=1e-2, method="pathcond", inplace=True, backend=None, input_shape=None):
    """Rescale the hidden neurons (channels) of a ReLU network so that its function is unchanged
    and its path-lifting kernel best conditioned (PathCond), or its per-neuron in/out norms
    balanced (``method="enorm"``, the baseline).

    model : a fastmem.pathcond.Network (numpy arrays) or any PyTorch nn.Module torch.fx reads
        (Network.from_torch: chains and residual networks; its parameters,
        on any device, are updated in place under torch.no_grad())
    sweeps, tol : at most ``sweeps`` coordinate sweeps, stopping once one moves sum |dz_h| < tol
        (the authors' defaults: 10 and 1e-2)
    inplace : update the model's parameters (default); else leave them and return the z to apply
        (``fm.pathcond.apply(model, res.z)``)
    input_shape : (C, H, W) for a network that starts with a convolution

    diag G is computed in float64 (kernel.py); the solver runs in float64 on the backend chosen
    (cpp, numba or numpy). Returns a Rescaling.
    """
    z, obj, done, net = solve(model, sweeps, tol, method, backend, input_shape)
    if inplace:
        apply_rescaling(net, z)
    return Rescaling(z, np.split(z, np.cumsum(net.hidden_sizes())[:-1]), obj, done, method, net)


def apply(model, z, input_shape=None):
    """theta' = theta * exp(-B z / 2) on ``model``'s parameters, in place (the function is
    unchanged)."""
    net = as_network(model, input_shape)
    z = np.asarray(z, dtype=np.float64)
    if z.shape != (sum(net.hidden_sizes()),):
        v.fail("z", f"shape ({sum(net.hidden_sizes())},), one per hidden neuron or channel", f"shape {z.shape}")
    apply_rescaling(net, z)
    return net


def rescale_in_eval(model, **kw):
    """``rescale`` with a PyTorch model in eval mode, put back in training mode after when it was:
    BatchNorm keeps the function under a rescaling in eval mode only."""
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        return rescale(model, **kw)
    finally:
        if training:
            model.train()


class RescaleEvery:
    """PathCond re-applied every ``every`` epochs in a PyTorch training loop, as the authors do
    (one sweep every 20 epochs on CIFAR, 50 on MNIST), with the optimizer rebuilt after each
    rescaling: its state (momentum buffers, Adam moments) belongs to the old parameterisation.

        helper = fm.pathcond.RescaleEvery(model, lambda: torch.optim.SGD(model.parameters(), lr=1e-2),
                                          every=20, sweeps=1)
        for epoch in range(epochs):
            opt = helper.optimizer_for(epoch)   # rescales at epochs 0, 20, 40, ... (new optimizer)
            ...train one epoch with opt...

    ``rescale_at_start`` False skips epoch 0. ``last`` is the Rescaling of the latest rescale.
    A PyTorch model in training mode is put in eval mode for the rescaling and back: its
    BatchNorm layers then keep the function exactly (in training mode their batch statistics
    would undo the scale of the channels before them, and the rescaling is refused), as the
    authors' training loops rescale their BatchNorm networks between epochs."""

    def __init__(self, model, make_optimizer, every, sweeps=1, tol=1e-2, method="pathcond", rescale_at_start=True,
                 input_shape=None, backend=None):
        if not callable(make_optimizer):
            v.fail("make_optimizer", "a callable returning a new optimizer of the model's parameters",
                   repr(make_optimizer))
        self.model, self.make_optimizer = model, make_optimizer
        self.every = v.positive_int("every", every)
        self.kw = dict(sweeps=sweeps, tol=tol, method=method, input_shape=input_shape, backend=backend)
        self.rescale_at_start = bool(rescale_at_start)
        self.optimizer, self.last = None, None

    def optimizer_for(self, epoch):
        epoch = v.positive_int("epoch", epoch, allow_zero=True)
        due = epoch % self.every == 0 and (epoch > 0 or self.rescale_at_start)
        if due:
            self.last = rescale_in_eval(self.model, **self.kw)
        if due or self.optimizer is None:
            self.optimizer = self.make_optimizer()
        return self.optimizer
