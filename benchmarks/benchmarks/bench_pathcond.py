"""PathCond on MLPs over width and depth: diag G, the solver (10 sweeps, no early stop) and the
whole rescaling, on numpy arrays (no PyTorch needed)."""

import numpy as np

import fastmem as fm

from .common import BACKENDS, require


def _mlp(width, depth, d_in=784, d_out=10, seed=0):
    """He-initialised weights and small biases of an MLP d_in - width^depth - d_out (float32)."""
    rng = np.random.default_rng(seed)
    sizes = [d_in] + [width] * depth + [d_out]
    Ws = [(rng.standard_normal((b, a), dtype=np.float32) * np.float32(np.sqrt(2 / a))) for a, b in
          zip(sizes[:-1], sizes[1:])]
    bs = [rng.uniform(-0.01, 0.01, b).astype(np.float32) for b in sizes[1:]]
    return fm.pathcond.Network.mlp(Ws, bs)


class PathCondMLP:
    params = ([128, 512, 2048], [3, 8], BACKENDS)
    param_names = ["width", "depth", "backend"]
    timeout = 300

    def setup(self, width, depth, backend):
        require(backend, "pathcond_solve")
        if backend == "numpy" and width * width * depth > 512 * 512 * 3:
            raise NotImplementedError("the per-neuron reference is too slow at this size")
        self.net, self.backend = _mlp(width, depth), backend
        self.G = fm.pathcond.diag_G(self.net)

    def time_diag_G(self, width, depth, backend):
        fm.pathcond.diag_G(self.net)

    def time_solve_10_sweeps(self, width, depth, backend):
        fm.pathcond.solve(self.net, sweeps=10, tol=0.0, G=self.G, backend=self.backend)

    def track_parameters_per_second(self, width, depth, backend):
        """Parameters x sweeps per second of the solver."""
        import time

        t = time.perf_counter()
        fm.pathcond.solve(self.net, sweeps=10, tol=0.0, G=self.G, backend=self.backend)
        return 10 * self.net.n_params / (time.perf_counter() - t)

    track_parameters_per_second.unit = "parameters/s"


class PathCondResNet:
    """The whole rescaling of torchvision's ResNets (fastmem.pathcond.models, block for block) on
    3 x 224 x 224 inputs, eval mode, float32 (PyTorch needed): diag G with torch on the model's
    device, the solver, the update. A fresh copy of the initial model each time."""

    params = ([18, 34, 50], ["cpp", "numba"])
    param_names = ["depth", "backend"]
    timeout = 300

    def setup(self, depth, backend):
        require(backend, "pathcond_solve")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("PyTorch is not installed") from None
        import warnings

        from fastmem.pathcond import models

        warnings.simplefilter("ignore", fm.pathcond.PathCondWarning)  # BatchNorm, max-pooling: known
        __import__("torch").manual_seed(0)
        self.model = getattr(models, f"resnet{depth}")().eval()
        self.state = {k: t.clone() for k, t in self.model.state_dict().items()}
        self.backend = backend

    def time_rescale(self, depth, backend):
        self.model.load_state_dict(self.state)  # from the initial weights each time (a few ms)
        fm.pathcond.rescale(self.model, input_shape=(3, 224, 224), backend=self.backend)

    def time_diag_G(self, depth, backend):
        fm.pathcond.diag_G(self.model, input_shape=(3, 224, 224))
