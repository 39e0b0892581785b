"""PathCond's solve against a PyTorch port of the authors' per-neuron solver, and the whole
rescaling of a ResNet-18-sized plain conv net, side by side.

    python benchmarks/pathcond_peers.py [--repeats 3]

The port is tests/torch_pathcond.py (written from docs/pathcond.md for the tests: the authors'
loop of small tensor operations per neuron, running sums updated in place); both get the same
diag G and must give the same z to 1e-8.
"""

import argparse
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


def plain_conv_net():
    """A ResNet-18-sized plain conv stack on 3 x 32 x 32 inputs: 11.8 M parameters."""
    import torch

    torch.manual_seed(0)
    nn, layers, c = torch.nn, [], 3
    for out, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                        (512, 1), (512, 1)]:
        layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1), nn.ReLU()]
        c = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 4 * 4, 10))


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
    conv = plain_conv_net()
    cnet = fm.pathcond.Network.from_torch(conv, (3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    before = conv(x).detach()
    t = time.perf_counter()
    res = fm.pathcond.rescale(conv, input_shape=(3, 32, 32), sweeps=10, tol=1e-2)
    whole = time.perf_counter() - t
    t = time.perf_counter()
    fm.pathcond.diag_G(cnet)
    dg = time.perf_counter() - t
    err = float((conv(x).detach() - before).abs().max() / before.abs().max())
    print(f"plain conv net: P = {cnet.n_params:,}, channels = {sum(cnet.hidden_sizes()):,}: whole rescaling "
          f"{whole:.3f} s (diag G {dg:.3f} s), {res.sweeps} sweeps, AM/GM {res.am_gm[0]:.3g} -> {res.am_gm[1]:.3g}, "
          f"function kept to {err:.1e} (float32)")


if __name__ == "__main__":
    main()
