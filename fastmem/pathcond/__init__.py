"""PathCond: path-conditioned rescaling of ReLU networks (Lebeurrier, Vayer, Gribonval, ICML 2026;
docs/pathcond.md), with ENorm as the baseline.

>>> res = fm.pathcond.rescale(model, sweeps=10, tol=1e-2)    # an nn.Module or fm.pathcond.Network
>>> res.z, res.objective                                      # one z per hidden neuron; F per sweep

- ``layers.py``: the layers (dense, convolutional, pooling, BatchNorm, residual additions);
- ``network.py``: the network, a graph of them built from numpy arrays or any PyTorch nn.Module
  (``torch_graph.py`` reads its torch.fx graph: chains and residual networks), which layers are
  rescaled, and the flat layout of its parameters;
- ``kernel.py``: diag G by one backward pass on squared parameters, the objective F, the
  function-preserving update;
- ``solve.py``: the exact coordinate solver (a compiled kernel of the backend registry:
  csrc/include/fastmem/kernels/pathcond.hpp), ``rescale`` and ``RescaleEvery``.
"""

from ..backends import register as _register

_register(__name__, {  # PathCond's kernel, as fastmem.memory's
    "pathcond_solve": ("weights", "groups", "z", "objective", "tol", "max_sweeps", "enorm"),
})

from .kernel import bz, diag_G, objective
from .layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv2d, Dense, Flatten, Identity, MaxPool2d,
                     PathCondWarning)
from .network import Network
from .solve import RescaleEvery, Rescaling, apply, rescale, solve
from . import experiments  # registers the sweep experiments

__all__ = ["Add", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm", "Conv2d", "Dense", "Flatten", "Identity", "MaxPool2d",
           "Network", "PathCondWarning", "RescaleEvery", "Rescaling", "apply", "bz", "diag_G", "objective", "rescale",
           "solve"]
