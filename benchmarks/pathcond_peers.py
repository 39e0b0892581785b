"""PathCond's solve against a PyTorch port of the authors' per-neuron solver on their MLP
3072-500x7-10, the same MLP through the authors' model class (fastmem reads it from its torch.fx
graph) and through nn.Sequential, and the whole rescaling of torchvision's ResNet-18 and
ResNet-50 (fastmem.pathcond.models) on 3 x 224 x 224 inputs, side by side in one run.

    python benchmarks/pathcond_peers.py [--repeats 3]

The port is tests/torch_pathcond.py (written from docs/pathcond.md for the tests: the authors'
loop of small tensor operations per neuron, running sums updated in place); both get the same
diag G and must give the same z to 1e-8.
"""

import argparse
import copy
import statistics
import time

import numpy as np

import fastmem as fm
from _ports import load_port


def _port():
    return load_port("torch_pathcond")


def mlp_3072_500x7_10():
    import torch

    torch.manual_seed(0)
    sizes, layers = [3072] + [500] * 7 + [10], []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers)


def authors_mlp(sequential):
    """The authors' model class in shape (their pathcond/models.py MLP: an nn.Sequential subclass
    holding its layers in self.model, with its own forward), read by fastmem from its torch.fx
    graph, holding the layers of ``sequential``."""
    import torch

    class MLP(torch.nn.Sequential):
        def __init__(self):
            super().__init__()
            self.model = sequential

        def forward(self, x):
            return self.model(x)

    return MLP()


def _median(f, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    port = _port()
    model = mlp_3072_500x7_10()
    net = fm.pathcond.Network.from_torch(model)
    G = fm.pathcond.diag_G(net)
    z, _, sweeps, _ = fm.pathcond.solve(net, sweeps=10, tol=1e-2, G=G)
    zt, _ = port.solve(model, (3072,), 10, 1e-2, G=__import__("torch").from_numpy(G))
    print(f"MLP 3072-500x7-10: P = {net.n_params:,}, H = {sum(net.hidden_sizes()):,}, {sweeps} sweeps, "
          f"max |z - z_port| = {np.abs(z - zt).max():.2e}")
    for backend in ("cpp", "numba"):
        fm.pathcond.solve(net, sweeps=10, tol=1e-2, G=G, backend=backend)
    import torch

    Gt = torch.from_numpy(G)
    rounds = {"fastmem diag G + solve (cpp)": lambda: fm.pathcond.solve(net, sweeps=10, tol=1e-2, backend="cpp"),
              "fastmem diag G + solve (numba)": lambda: fm.pathcond.solve(net, sweeps=10, tol=1e-2,
                                                                           backend="numba"),
              "fastmem diag G": lambda: fm.pathcond.diag_G(net),
              "fastmem solve (cpp)": lambda: fm.pathcond.solve(net, sweeps=10, tol=1e-2, G=G, backend="cpp"),
              "PyTorch port: diag G (autograd)": lambda: port.diag_G(model, (3072,)),
              "PyTorch port: solve": lambda: port.solve(model, (3072,), 10, 1e-2, G=Gt),
              "PyTorch port: diag G + solve": lambda: port.solve(model, (3072,), 10, 1e-2)}
    med = {name: _median(f, a.repeats if "port: diag G + solve" not in name and "port: solve" not in name else 1)
           for name, f in rounds.items()}
    base = med["PyTorch port: diag G + solve"]
    for name, t in med.items():
        print(f"  {name:<32} {t * 1e3:10.1f} ms   port / this: {base / t:6.1f}x")
    # the traced path (the authors' class) against nn.Sequential: the same layers, the same z
    def whole(make):
        return lambda: fm.pathcond.rescale(make(), sweeps=10, tol=1e-2)

    seq = whole(lambda: copy.deepcopy(model))
    traced = whole(lambda: authors_mlp(copy.deepcopy(model)))
    seq()
    traced()
    times = {seq: [], traced: []}
    for _ in range(max(a.repeats, 5)):  # interleaved: the machine's noise falls on both alike
        for f in times:
            t = time.perf_counter()
            f()
            times[f].append(time.perf_counter() - t)
    t_seq, t_traced = statistics.median(times[seq]), statistics.median(times[traced])
    print(f"  whole rescaling, nn.Sequential       {t_seq * 1e3:10.1f} ms")
    print(f"  whole rescaling, the authors' class  {t_traced * 1e3:10.1f} ms   traced / Sequential: "
          f"{t_traced / t_seq:.3f}")
    import warnings

    from fastmem.pathcond import models

    warnings.simplefilter("ignore", fm.pathcond.PathCondWarning)  # BatchNorm, max-pooling: known
    for depth in (18, 50):
        torch.manual_seed(0)
        init = getattr(models, f"resnet{depth}")().eval()
        x = torch.randn(2, 3, 224, 224)
        before = init(x).detach()
        fresh = [copy.deepcopy(init) for _ in range(a.repeats)]
        times, parts = [], {}
        for m in fresh:  # from the initial weights each time
            t = time.perf_counter()
            res = fm.pathcond.rescale(m, input_shape=(3, 224, 224))
            times.append(time.perf_counter() - t)
        net = fm.pathcond.Network.from_torch(init, (3, 224, 224))
        parts["graph"] = _median(lambda: fm.pathcond.Network.from_torch(init, (3, 224, 224)), a.repeats)
        G = fm.pathcond.diag_G(net)
        parts["diag G"] = _median(lambda: fm.pathcond.diag_G(net), a.repeats)
        parts["solve"] = _median(lambda: fm.pathcond.solve(net, G=G), a.repeats)
        err = float((fresh[0](x).detach() - before).abs().max() / before.abs().max())
        print(f"ResNet-{depth} (3 x 224 x 224, float32, eval): P = {net.n_params:,}, {len(net.rescaled())} rescaled "
              f"layers, {sum(net.hidden_sizes()):,} channels: whole rescaling {statistics.median(times):.3f} s ("
              + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
              + f"), {res.sweeps} sweeps, AM/GM {res.am_gm[0]:.3g} -> {res.am_gm[1]:.3g}, function kept to "
              f"{err:.1e}")


if __name__ == "__main__":
    main()
