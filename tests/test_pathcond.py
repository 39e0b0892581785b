"""PathCond (issue 17): diag G against path enumeration, the function preserved, the solver's
invariants, every backend against the float64 reference, and an independent PyTorch port."""

import copy
import itertools

import numpy as np
import pytest

import fastmem as fm
from fastmem import pathcond as pc

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
from fastmem.pathcond import models  # noqa: E402 - needs torch


def _mlp(sizes, bias=True, seed=0, first_scale=1.0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, bias=bias)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    m = nn.Sequential(*layers).double()
    with torch.no_grad():
        m[0].weight.mul_(first_scale)
    return m


def _convnet(bias=True, seed=0, pool=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(),
              nn.Conv2d(3, 4, 2, stride=2, bias=bias), nn.ReLU()]
    layers += [nn.MaxPool2d(2)] if pool else []
    layers += [nn.Flatten(), nn.Linear(4 * (1 if pool else 4), 5, bias=bias), nn.ReLU(), nn.Linear(5, 2, bias=bias)]
    return nn.Sequential(*layers).double()


class _ResidualMLP(nn.Module):
    """a's neurons are read by b and by the skip (tied), b's are rescaled, c's reach the addition
    (tied), d is the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        out = self.c(F.relu(self.b(h)))
        out += h
        return self.d(F.relu(out))


class _ResidualConv(nn.Module):
    """A stem, one BasicBlock-like block (conv1 rescaled, conv2 tied by the skip), overlapping
    adaptive average pooling, a dense head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv0 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(2 * 4, 2)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        out = self.conv2(F.relu(self.conv1(x)))
        out = F.relu(out + x)
        return self.fc(torch.flatten(self.pool(out), 1))


class _Bottleneck(nn.Module):
    """A Bottleneck-like block: conv1 and conv2 rescaled (a chain of two groups), conv3 tied;
    average pooling without the padding in its count."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv0 = nn.Conv2d(1, 2, 1)
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(3, 2, 1)
        self.pool, self.fc = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), nn.Linear(2 * 9, 2)

    def forward(self, x):
        x = torch.relu(self.conv0(x))
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        out = self.pool(F.relu(out + x))
        return self.fc(out.view(out.size(0), -1))


class _MeanPool(nn.Module):
    """Global average pooling written as x.mean((2, 3)) (keepdim: then a flatten)."""

    def __init__(self, keepdim=False):
        super().__init__()
        torch.manual_seed(10)
        self.keepdim = keepdim
        self.c1, self.c2, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3), keepdim=self.keepdim)
        return self.fc(torch.flatten(x, 1) if self.keepdim else x)


def _dead_entries():
    """3 x 3 kernels over 1 x 1 maps: only their centres are on a path (G = 0 elsewhere)."""
    torch.manual_seed(8)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4, 2))


# name: (model, input shape, what it has: "chain" (layers in a chain), "avgpool" (fixed 1/k weights:
# autograd of the model does not square them), "dead" (entries with G = 0, which the port of the
# authors' solver takes the log of))
NETS = {
    "mlp": (lambda: _mlp([3, 4, 5, 2]), None, {"chain"}),
    "mlp-no-bias": (lambda: _mlp([3, 4, 5, 2], bias=False), None, {"chain"}),
    "mlp-deep": (lambda: _mlp([2, 3, 3, 3, 2], seed=3), None, {"chain"}),
    "conv": (lambda: _convnet(), (2, 4, 4), {"chain"}),
    "conv-no-bias": (lambda: _convnet(bias=False), (2, 4, 4), {"chain"}),
    "residual-mlp": (lambda: _ResidualMLP().double(), None, set()),
    "residual-conv": (lambda: _ResidualConv().double(), (1, 3, 3), {"avgpool"}),
    "bottleneck": (lambda: _Bottleneck().double(), (1, 3, 3), {"avgpool"}),
    "dead-entries": (lambda: _dead_entries().double(), (2, 1, 1), {"chain", "dead"}),
    "mean-pool": (lambda: _MeanPool().double(), (1, 3, 3), {"avgpool"}),
    "mean-pool-keepdim": (lambda: _MeanPool(keepdim=True).double(), (1, 3, 3), {"avgpool"}),
}


def _nets(without=()):
    return [name for name, (_, _, has) in NETS.items() if not has & set(without)]


def _input_shape(model, shape):
    return shape or (next(model.parameters()).shape[1],)


# ---- diag G ----------------------------------------------------------------------------------

def _unrolled(net):
    """Each layer as maps on the flattened activations of what it reads: [(input layer, M, C)] with
    M the parameter index of each (output unit, input unit) edge or -1, C the fixed weight of an
    edge without a parameter (an average pooling's 1 / k, a skip's 1; 0: no edge), and the bias
    index of each output unit or -1; weights shared by a convolution keep their one index."""
    offsets = dict(zip((id(la) for la in net.params()), net.layout()[0]))
    maps = []
    for i, (la, (shape_in, shape_out)) in enumerate(zip(net.layers, net.shapes)):
        n_in, n_out = int(np.prod(shape_in)), int(np.prod(shape_out))
        M, C, bias = -np.ones((n_out, n_in), int), np.zeros((n_out, n_in)), -np.ones(n_out, int)
        if isinstance(la, pc.Dense):
            w, b = offsets[id(la)]
            M[:] = w + np.arange(n_out * n_in).reshape(n_out, n_in)
            bias = b + np.arange(n_out) if b >= 0 else bias
        elif isinstance(la, pc.Conv2d):
            w, b = offsets[id(la)]
            Co, Ci, kh, kw = la.weight.shape
            _, H, W = shape_in
            _, Ho, Wo = shape_out
            for co, y, x, ci, u, v in itertools.product(range(Co), range(Ho), range(Wo), range(Ci), range(kh), range(kw)):
                yy, xx = y * la.stride[0] + u - la.padding[0], x * la.stride[1] + v - la.padding[1]
                if 0 <= yy < H and 0 <= xx < W:
                    M[(co * Ho + y) * Wo + x, (ci * H + yy) * W + xx] = w + ((co * Ci + ci) * kh + u) * kw + v
            bias = np.repeat(b + np.arange(Co), Ho * Wo) if b >= 0 else bias
        elif isinstance(la, (pc.AvgPool2d, pc.AdaptiveAvgPool2d)):
            Ah, Aw = pc.layers.pool_weights(la, shape_in)
            C = np.kron(np.eye(shape_in[0]), np.kron(Ah, Aw))
        else:  # a skip, a flatten, BatchNorm (the identity, as the authors take it)
            C = np.eye(n_out)
        maps.append(([(j, M, C) for j in net.inputs[i]], bias))
    return maps


def _brute_force_G(net):
    """G_ii = sum over the paths p through parameter i of the product of the path's other weights
    (parameters and fixed weights), squared; every path enumerated, from an input unit or a bias,
    along the graph (through each branch of a residual addition) to an output unit."""
    theta2 = np.square(net.flat())
    maps = _unrolled(net)
    readers = [[i for i, ins in enumerate(net.inputs) if j in ins] for j in range(-1, len(net.layers))]
    G = np.zeros_like(theta2)
    last = len(net.layers) - 1

    def walk(layer, unit, edges, fixed):
        if layer == last:
            prod = (np.prod(theta2[edges]) if edges else 1.0) * fixed
            for e in edges:
                G[e] += prod / theta2[e]
        for r in readers[layer + 1]:
            for j, M, C in maps[r][0]:
                if j != layer:
                    continue
                for nxt in np.flatnonzero((M[:, unit] >= 0) | (C[:, unit] != 0)):
                    e = M[nxt, unit]
                    walk(r, nxt, edges + [e] if e >= 0 else edges, fixed if e >= 0 else fixed * C[nxt, unit] ** 2)

    for unit in range(int(np.prod(net.shapes[0][0]))):
        walk(-1, unit, [], 1.0)
    for layer, (_, bias) in enumerate(maps):
        for unit, b in enumerate(bias):
            if b >= 0:
                walk(layer, unit, [b], 1.0)
    return G


@pytest.mark.parametrize("name", NETS)
def test_diag_G_equals_path_enumeration(name):
    make, shape, _ = NETS[name]
    net = pc.Network.from_torch(make(), shape)
    np.testing.assert_allclose(pc.diag_G(net), _brute_force_G(net), rtol=1e-12)


@pytest.mark.parametrize("name", _nets(without={"avgpool"}))
def test_diag_G_equals_autograd(name):
    from torch_pathcond import diag_G

    make, shape, _ = NETS[name]
    model = make()
    np.testing.assert_allclose(pc.diag_G(model, shape), diag_G(model, _input_shape(model, shape)).numpy(),
                               rtol=1e-12)


# ---- the rescaling ---------------------------------------------------------------------------

def _inputs(shape, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + tuple(shape), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", NETS)
def test_the_function_is_preserved(name, dtype, tol):
    make, shape, _ = NETS[name]
    model = make().to(dtype)
    x = _inputs(_input_shape(model, shape)).to(dtype)
    before = model(x).detach()
    res = pc.rescale(model, input_shape=shape)
    after = model(x).detach()
    assert np.abs(res.z).max() > 0.05  # something moved
    assert float((after - before).abs().max()) <= tol * max(1.0, float(before.abs().max()))


@pytest.mark.parametrize("name", NETS)
def test_G_of_the_rescaled_network_is_G_times_e_to_the_Bz(name):
    make, shape, _ = NETS[name]
    model = make()
    net = pc.Network.from_torch(model, shape)
    G = pc.diag_G(net)
    res = pc.rescale(net)
    np.testing.assert_allclose(pc.diag_G(net), G * np.exp(pc.bz(net.groups(), res.z, G.size)), rtol=1e-8)


def test_numpy_networks_are_rescaled_in_place():
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((6, 3)) * 10, rng.standard_normal((4, 6)), rng.standard_normal((2, 4))]
    bs = [rng.standard_normal(6), rng.standard_normal(4), rng.standard_normal(2)]
    net = pc.Network.mlp(Ws, bs)
    x = rng.standard_normal((3, 5))

    def f(x):
        h = x
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = W @ h + b[:, None]
            h = np.maximum(h, 0) if i < 2 else h
        return h

    before, W0 = f(x), Ws[0].copy()
    res = pc.rescale(net)
    assert not np.array_equal(Ws[0], W0)  # the caller's arrays, changed
    np.testing.assert_allclose(f(x), before, rtol=1e-12, atol=1e-12)
    assert res.objective[-1] < res.objective[0] and len(res.z_layers) == 2 and res.z_layers[0].shape == (6,)
    kept = pc.Network.mlp([W.copy() for W in Ws], [b.copy() for b in bs])
    again = pc.rescale(kept, inplace=False)
    assert np.array_equal(kept.params()[0].weight, Ws[0])  # inplace=False: nothing changed
    pc.apply(kept, again.z)


# ---- the solver ------------------------------------------------------------------------------

def test_F_falls_every_sweep_on_the_5_16_16_3_example():
    # docs/pathcond.md: an MLP 5-16-16-3 whose first layer is multiplied by 20
    for seed in range(3):
        res = pc.rescale(_mlp([5, 16, 16, 3], seed=seed, first_scale=20.0), sweeps=10, tol=0)
        assert res.sweeps == 10 and np.all(np.diff(res.objective) <= 1e-9 * res.objective[0])
        before, after = res.am_gm
        assert before > 4 and after < 1.1 and res.objective[-1] < res.objective[0] / 10


def _grad_F(G, groups, z, eps=1e-6):
    out = np.empty_like(z)
    for h in range(z.size):
        e = np.zeros_like(z)
        e[h] = eps
        out[h] = (pc.objective(G, z + e, groups=groups) - pc.objective(G, z - e, groups=groups)) / (2 * eps)
    return out


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_each_coordinate_step_zeroes_its_derivative_and_a_converged_solve_is_stationary(name):
    make, shape, _ = NETS[name]
    net = pc.Network.from_torch(make(), shape)
    G, groups = pc.diag_G(net), net.groups()
    z1, _, _, _ = pc.solve(net, sweeps=1, tol=0)
    assert abs(_grad_F(G, groups, z1)[-1]) < 1e-6 * net.n_params  # the last neuron updated
    z, obj, done, _ = pc.solve(net, sweeps=500, tol=1e-13)
    assert np.abs(_grad_F(G, groups, z)).max() < 1e-5 * net.n_params
    # a second solve from the converged network returns z = 0
    pc.apply(net, z)
    again, _, _, _ = pc.solve(net, sweeps=5, tol=0)
    assert np.abs(again).max() < 1e-6


@pytest.mark.parametrize("method", ["pathcond", "enorm"])
@pytest.mark.parametrize("name", NETS)
def test_compiled_solvers_agree_with_the_reference(compiled, name, method):
    make, shape, _ = NETS[name]
    net = pc.Network.from_torch(make(), shape)
    want = pc.solve(net, sweeps=7, tol=0, method=method, backend="numpy")
    got = pc.solve(net, sweeps=7, tol=0, method=method, backend=compiled)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10)


def test_enorm_balances_in_and_out_norms():
    model = _mlp([4, 6, 5, 3], seed=2, first_scale=5.0)
    net = pc.Network.from_torch(model)
    res = pc.rescale(net, method="enorm", sweeps=200, tol=1e-12)
    for k, la in enumerate(net.params()[:-1]):
        nxt = net.params()[k + 1]
        w_in = la.weight.detach().numpy() ** 2
        s_in = w_in.sum(axis=1) + la.bias.detach().numpy() ** 2
        s_out = (nxt.weight.detach().numpy() ** 2).sum(axis=0)
        np.testing.assert_allclose(s_in, s_out, rtol=1e-8)
    assert res.method == "enorm" and len(res.objective) == 2


@pytest.mark.parametrize("name", [name for name in _nets(without={"avgpool", "dead"}) if "chain" in NETS[name][2]])
def test_z_equals_a_pytorch_port_of_the_authors_solver(name):
    import torch_pathcond

    make, shape, _ = NETS[name]
    model = make()
    want_z, want_F = torch_pathcond.solve(model, _input_shape(model, shape), sweeps=10, tol=1e-2)
    res = pc.rescale(model, input_shape=shape, sweeps=10, tol=1e-2)
    np.testing.assert_allclose(res.z, want_z, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.objective, want_F, rtol=1e-8)


# ---- layers, warnings, errors ------------------------------------------------------------------

def test_maxpool_is_kept_with_a_warning_naming_it():
    with pytest.warns(pc.PathCondWarning, match=r"model.4 \(MaxPool2d\): .*approximate"):
        net = pc.Network.from_torch(_convnet(pool=True), (2, 4, 4))
    model = _convnet(pool=True)
    x = _inputs((2, 4, 4))
    before = model(x).detach()
    with pytest.warns(pc.PathCondWarning):
        pc.rescale(model, input_shape=(2, 4, 4))
    assert float((model(x).detach() - before).abs().max()) < 1e-12  # max-pooling commutes with the scaling
    assert net.n_params > 0


def _bn_mlp():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                          nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    with torch.no_grad():  # statistics and affine parameters as after training
        for bn in (model[1], model[5]):
            bn.running_mean.copy_(torch.randn(4))
            bn.running_var.copy_(0.5 + torch.rand(4))
            bn.weight.copy_(0.5 + torch.rand(4))
            bn.bias.copy_(torch.randn(4))
    return model


def test_batchnorm_in_eval_mode_is_warned_and_the_function_kept_exactly():
    # BatchNorm before or after the ReLU, with statistics away from their initial values: the
    # channels it carries are rescaled with its bias and running mean, so eval mode is exact
    model = _bn_mlp().eval()
    x = _inputs((3,))
    before = model(x).detach()
    gamma, var = model[1].weight.detach().clone(), model[1].running_var.clone()
    with pytest.warns(pc.PathCondWarning, match=r"model.1, model.5 \(BatchNorm\): diag G takes it as the "
                                                r"identity .*kept exactly in eval mode"):
        res = pc.rescale(model)
    assert np.abs(res.z).max() > 0.05
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    assert torch.equal(model[1].weight, gamma) and torch.equal(model[1].running_var, var)
    # diag G leaves BatchNorm out: the same G as the network without it
    plain = nn.Sequential(*[m for m in _bn_mlp() if not isinstance(m, nn.BatchNorm1d)])
    with pytest.warns(pc.PathCondWarning):
        np.testing.assert_array_equal(pc.diag_G(_bn_mlp().eval()), pc.diag_G(plain))


def test_batchnorm_in_training_mode_is_refused_by_name():
    # batch statistics undo a channel's scale: no rescaling of the layer before survives them
    model = _bn_mlp().train()
    before = [t.detach().clone() for t in itertools.chain(model.parameters(), model.buffers())]
    with pytest.raises(fm.InvalidArgumentError, match=r"^model.1: expected BatchNorm in eval mode .*got training"):
        pc.rescale(model)
    assert all(torch.equal(a, b) for a, b in zip(before, itertools.chain(model.parameters(), model.buffers())))
    # a BatchNorm after a layer whose channels are tied (not rescaled) may be in training mode
    tied = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2)).double().train()
    with pytest.warns(pc.PathCondWarning, match="model.3"):
        assert pc.rescale(tied).sweeps >= 1


def test_rescale_every_rescales_a_batchnorm_model_in_eval_mode():
    model = _bn_mlp().train()
    helper = pc.RescaleEvery(model, lambda: torch.optim.SGD(model.parameters(), lr=0.1), every=2)
    with pytest.warns(pc.PathCondWarning):
        helper.optimizer_for(0)
    assert model.training and helper.last.sweeps == 1


@pytest.mark.parametrize("model, match", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), r"^model.1: expected .*got Tanh"),
    (lambda: nn.Linear(3, 4), r"^layers: expected at least two"),
    (lambda: nn.Sequential(nn.Linear(3, 4)), r"^layers: expected at least two"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), r"^layers\[2\]: expected"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2)), r"^model.2: expected"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), r"^model: expected a ReLU network .*got no ReLU"),
    (lambda: "a model", r"^model: expected"),
])
def test_unsupported_models_are_refused_by_name(model, match):
    with pytest.raises(fm.InvalidArgumentError, match=match):
        pc.rescale(model(), input_shape=(1, 5, 5) if "Conv" in repr(model()) else None)


class _AuthorsMLP(nn.Sequential):
    """The authors' model class (pathcond/models.py): an nn.Sequential subclass holding its layers
    in self.model, whose forward flattens with x.view(x.size(0), -1)."""

    def __init__(self, sizes):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.model(x)


class _UsersConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2)
        self.drop, self.fc = nn.Dropout(0.1), nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(self.drop(torch.flatten(x, 1)))


class _AuthorsMLPBN(nn.Module):
    """The authors' MLP_BN in shape (pathcond/models.py): named Linear (no bias), BatchNorm1d and
    ReLU layers in an OrderedDict, a flatten only for inputs of more than two dimensions."""

    def __init__(self, sizes):
        super().__init__()
        from collections import OrderedDict

        layers = OrderedDict()
        for i, (a, b) in enumerate(zip(sizes[:-2], sizes[1:-1])):
            layers[f"lin{i}"], layers[f"bn{i}"], layers[f"relu{i}"] = nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), \
                nn.ReLU()
        layers["output"] = nn.Linear(sizes[-2], sizes[-1])
        self.model = nn.Sequential(layers)

    def forward(self, x):
        if x.dim() > 2:
            x = x.view(x.size(0), -1)
        return self.model(x)


@pytest.mark.parametrize("input_shape", [None, (1, 3, 4)])
def test_the_authors_mlp_bn_reads_with_its_branch_on_the_input_rank(input_shape):
    torch.manual_seed(1)
    model = _AuthorsMLPBN([12, 8, 8, 4]).double()
    model.train()
    model(torch.randn(16, 12, dtype=torch.float64))  # running statistics away from 0 and 1
    model.eval()
    x = torch.randn((5,) + (input_shape or (12,)), dtype=torch.float64)
    before = model(x).detach()
    with pytest.warns(pc.PathCondWarning, match=r"model.model.bn0, model.model.bn1 \(BatchNorm\)"):
        res = pc.rescale(model, input_shape=input_shape)
    assert res.network.rescaled() == ["model.lin0", "model.lin1"]
    assert (res.network.layers[0].__class__ is pc.Flatten) == (input_shape is not None)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


def test_any_module_is_read_from_its_graph():
    # torch.fx: the authors' MLP class and a user's nn.Module rescale with their functions
    # preserved, and the authors' class exactly as the nn.Sequential of the same layers
    torch.manual_seed(0)
    authors = _AuthorsMLP([12, 8, 8, 8, 4]).double()
    plain = copy.deepcopy(authors.model)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    before = authors(x).detach()
    z_authors, _, _, net = pc.solve(authors)
    z_plain = pc.solve(plain)[0]
    np.testing.assert_array_equal(z_authors, z_plain)
    assert [la.name for la in net.params()] == ["model.0", "model.2", "model.4", "model.6"]
    pc.rescale(authors)
    torch.testing.assert_close(authors(x), before, rtol=0, atol=1e-12)
    assert not torch.allclose(authors.model[0].weight, plain[0].weight)  # rescaled: the check could fail
    users = _UsersConvNet().double().eval()
    xi = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    before = users(xi).detach()
    pc.rescale(users, input_shape=(2, 5, 5))
    torch.testing.assert_close(users(xi), before, rtol=0, atol=1e-12)


class _AllTied(nn.Module):
    """Every hidden neuron reaches the residual addition: nothing to rescale."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(F.relu(self.b(h) + h))


class _AddsAConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(F.relu(self.a(x) + 1.0))


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(F.relu(self.b(h))), h


class _BranchOnData(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.c(torch.relu(self.a(x)))


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(F.gelu(self.a(x)))


@pytest.mark.parametrize("make, match", [
    (_AllTied, r"^layers: expected a hidden layer whose outputs can be rescaled .*got none"),
    (_AddsAConstant, r"^model.add: expected Linear, Conv2d, ReLU .*residual addition, got call_function add"),
    (_TwoOutputs, r"^model: expected one output, the last layer's"),
    (_BranchOnData, r"^model: expected a module torch.fx can trace .*got _BranchOnData \(TraceError"),
    (_Gelu, r"^model.gelu: expected Linear, Conv2d, ReLU .*got call_function gelu"),
])
def test_a_module_of_unknown_operations_is_refused_by_node(make, match):
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(fm.InvalidArgumentError, match=match):
        pc.rescale(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_arguments_are_named():
    model = _mlp([3, 4, 2])
    with pytest.raises(fm.InvalidArgumentError, match="^method: "):
        pc.rescale(model, method="sinkhorn")
    with pytest.raises(fm.InvalidArgumentError, match="^sweeps: "):
        pc.rescale(model, sweeps=-1)
    with pytest.raises(fm.InvalidArgumentError, match="^z: expected shape"):
        pc.apply(model, np.zeros(3))
    with pytest.raises(fm.InvalidArgumentError, match="^input_shape: "):
        pc.rescale(_convnet())
    with pytest.raises(fm.InvalidArgumentError, match=r"^G: expected .*some positive"):
        pc.solve(model, G=np.zeros(pc.Network.from_torch(model).n_params))
    with pytest.raises(fm.InvalidArgumentError, match=r"^G: expected .*non-negative"):
        pc.solve(model, G=-np.ones(pc.Network.from_torch(model).n_params))


def test_a_neuron_on_no_path_keeps_its_scale_and_the_others_are_rescaled(compiled):
    model = _mlp([3, 4, 5, 2], seed=1, first_scale=8.0)
    with torch.no_grad():
        model[0].weight[1] = 0.0  # neuron 1 of layer 0 has no incoming weight: its outgoing G vanish
        model[0].bias[1] = 0.0
    x = _inputs((3,))
    before = model(x).detach()
    G = pc.diag_G(model)
    assert (G == 0).sum() == 5
    want = pc.solve(model, sweeps=6, tol=0, backend="numpy")
    got = pc.solve(model, sweeps=6, tol=0, backend=compiled)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
    assert np.isfinite(got[0]).all() and got[1][-1] < got[1][0] / 2
    pc.apply(model, got[0])
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


def test_rescale_every_rebuilds_the_optimizer_when_it_rescales():
    model = _mlp([3, 8, 8, 2], first_scale=10.0)
    made = []

    def make():
        made.append(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        return made[-1]

    helper = pc.RescaleEvery(model, make, every=3, sweeps=1)
    opts = [helper.optimizer_for(epoch) for epoch in range(7)]
    assert len(made) == 3 and opts[0] is opts[2] is made[0] and opts[3] is made[1] and opts[6] is made[2]
    assert helper.last.sweeps == 1


def test_enorm_takes_zero_weights_but_refuses_a_neuron_without_any(compiled):
    model = _mlp([3, 4, 5, 2], seed=4)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # one zero entry: ENorm balances sums, fine
    res = pc.rescale(model, method="enorm", backend=compiled)
    assert np.isfinite(res.z).all()
    with torch.no_grad():
        model[2].weight[:, 1] = 0.0  # neuron 1 of layer 1 has no outgoing weight
    with pytest.raises(fm.InvalidArgumentError, match="^model: expected hidden neurons with non-zero"):
        pc.rescale(model, method="enorm", backend=compiled)


def _numpy_net(dtype=np.float64, seed=0):
    from fastmem.pathcond import Dense, Network

    rng = np.random.default_rng(seed)
    W1, b1, W2 = (rng.normal(size=s) * 3 for s in ((4, 3), (4,), (2, 4)))
    return Network([Dense(W1.astype(dtype), b1.astype(dtype)), Dense(W2.astype(dtype))])


@pytest.mark.parametrize("spoil, match", [
    ("int weights", "weight: expected float32 or float64 values, got dtype int64"),
    ("read-only second weight", "writeable weights.*layer 1"),
    ("NaN z", "^z: expected finite"),
    ("huge z", "^z: expected a rescaling that keeps the weights finite"),
])
def test_a_rescaling_is_applied_whole_or_not_at_all(spoil, match):
    net = _numpy_net()
    if spoil == "read-only second weight":
        net.layers[1].weight.flags.writeable = False
    before = [a.copy() for la in net.layers for a in (la.weight, la.bias) if a is not None]
    z = {"NaN z": np.array([0.1, np.nan, 0.0, 0.2]), "huge z": np.array([1e4, 0.0, 0.0, 0.0])}.get(spoil)
    with pytest.raises(fm.InvalidArgumentError, match=match):
        if spoil == "int weights":
            net = _numpy_net(np.int64)  # refused as it is built, before any rescaling
        if z is None:
            fm.pathcond.rescale(net)
        else:
            fm.pathcond.apply(net, z)
    after = [a for la in net.layers for a in (la.weight, la.bias) if a is not None]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # nothing was changed


def test_sweeps_and_inputs_are_bounded_before_anything_is_allocated():
    with pytest.raises(fm.InvalidArgumentError, match="^sweeps: expected an integer below"):
        fm.pathcond.rescale(_numpy_net(), sweeps=10**12)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    before = [p.detach().clone() for p in conv.parameters()]
    with pytest.raises(fm.InvalidArgumentError, match=r"^input_shape: expected diag G's float64 arrays .* that fit "
                                                      r"in memory .*got input \(3, 40960, 40960\)"):
        fm.pathcond.rescale(conv, input_shape=(3, 40960, 40960))  # 1.4 TB of im2col columns
    assert all(torch.equal(a, b) for a, b in zip(before, conv.parameters()))


@pytest.mark.parametrize("make, match", [
    (lambda: _layers(np.ones(4), np.ones((2, 4))), "weight: expected a 2-D array"),
    (lambda: _layers([[1.0, 2.0]], np.ones((2, 1))), "weight: expected a numpy array or a PyTorch tensor, got list"),
    (lambda: _layers(np.ones((4, 3), complex), np.ones((2, 4))), "weight: expected float32 or float64 values"),
    (lambda: nn.Sequential(nn.Linear(3, 4).to(torch.bfloat16), nn.ReLU(), nn.Linear(4, 2).to(torch.bfloat16)),
     "0.weight: expected float32 or float64 values, got dtype bfloat16"),
    (lambda: nn.Sequential(nn.Linear(3, 4, device="meta"), nn.ReLU(), nn.Linear(4, 2, device="meta")),
     "0.weight: expected a tensor with data"),
])
def test_bad_weights_are_named(make, match):
    with pytest.raises(fm.InvalidArgumentError, match=match):
        fm.pathcond.rescale(make())


def _layers(W1, W2):
    from fastmem.pathcond import Dense, Network

    return Network([Dense(W1), Dense(W2)])


def _numpy_twin(net):
    """The same network with numpy copies of its arrays (the numpy path of diag G)."""
    def twin(la):
        d = dict(la.__dict__)
        for what in ("weight", "bias", "running_mean"):
            if d.get(what) is not None:
                d[what] = d[what].detach().cpu().numpy().copy()
        return type(la)(**d)
    return pc.Network([twin(la) for la in net.layers], net.input_shape)


def _conv_pool_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2, bias=False)).double()


def _randomise_batchnorm(model, seed=0):
    """Running statistics and affine parameters away from their initial values (as after
    training), so that a rescaling that ignored them would change the function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model


def _small_resnet():
    return _randomise_batchnorm(models.resnet18(num_classes=3, width=4)).double().eval()


class _FunctionalPools(nn.Module):
    """Pooling written as functions: F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.c1, self.c2, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(16, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.avg_pool2d(F.relu(self.c2(x)), kernel_size=2, stride=1)
        return self.fc(F.adaptive_avg_pool2d(x, (2, 2)).flatten(1))


TWINS = {"conv-pool": (_conv_pool_net, (2, 8, 8)), "resnet18-narrow": (_small_resnet, (3, 16, 16)),
         "bottleneck": (lambda: _Bottleneck().double(), (1, 3, 3)),
         "functional-pools": (lambda: _FunctionalPools().double(), (2, 6, 6))}


@pytest.mark.filterwarnings("ignore::fastmem.pathcond.PathCondWarning")
def test_pooling_functions_read_as_their_modules():
    net = pc.Network.from_torch(_FunctionalPools(), (2, 6, 6))
    assert [type(la).__name__ for la in net.layers] == ["Conv2d", "MaxPool2d", "Conv2d", "AvgPool2d",
                                                       "AdaptiveAvgPool2d", "Flatten", "Dense"]
    assert net.layers[3].kernel == (2, 2) and net.layers[3].stride == (1, 1) and net.rescaled() == ["c1", "c2"]


@pytest.mark.filterwarnings("ignore::fastmem.pathcond.PathCondWarning")
@pytest.mark.parametrize("name", TWINS)
def test_diag_G_of_a_torch_model_is_taken_with_torch_on_its_device(monkeypatch, name):
    # torch operations on the parameters' device, the result to the host once: the same G as the
    # numpy path; no parameter goes to the host by itself (the numpy path's _to_numpy refuses here)
    from fastmem.pathcond import kernel, network

    make, shape = TWINS[name]
    net = pc.Network.from_torch(make(), shape)
    want = kernel.diag_G(_numpy_twin(net))
    real = network._to_numpy

    def no_tensors(a):
        if not isinstance(a, np.ndarray):
            raise AssertionError("a parameter copied to the host by itself")
        return real(a)

    monkeypatch.setattr(kernel, "_to_numpy", no_tensors)
    monkeypatch.setattr(network, "_to_numpy", no_tensors)
    got = kernel.diag_G(net)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    model = make()
    x = torch.randn((3,) + shape, dtype=torch.float64)
    before = model(x).detach()
    pc.rescale(model, input_shape=shape)  # the whole rescaling through the same path
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


def test_parameters_on_two_devices_are_refused():
    from fastmem.pathcond import Dense, Network

    with pytest.raises(fm.InvalidArgumentError, match=r"^model: expected every parameter on one device .*"
                                                      r"a.weight on numpy, b.weight on torch cpu"):
        Network([Dense(np.ones((4, 3)), name="a"), Dense(torch.ones(2, 4, dtype=torch.float64), name="b")])


def test_hand_written_residual_networks_name_their_inputs():
    from fastmem.pathcond import Add, Dense, Network

    rng = np.random.default_rng(3)
    Wa, Wb, Wc, Wd = (rng.normal(size=s) for s in ((4, 3), (5, 4), (4, 5), (2, 4)))
    net = Network([Dense(Wa, name="a"), Dense(Wb, name="b"), Dense(Wc, name="c"), Add(inputs=(2, 0)),
                   Dense(Wd, name="d")])
    assert net.rescaled() == ["b"] and net.hidden_sizes() == [5]

    def f(x):
        h = np.maximum(Wa @ x, 0)
        return Wd @ np.maximum(Wc @ np.maximum(Wb @ h, 0) + h, 0)

    x = rng.normal(size=(3, 6))
    before = f(x)
    pc.rescale(net)
    np.testing.assert_allclose(f(x), before, rtol=1e-12, atol=1e-12)
    with pytest.raises(fm.InvalidArgumentError, match=r"^layers\[add\].inputs: expected two or more layers"):
        Network([Dense(Wa), Dense(Wb), Add(inputs=(1,)), Dense(Wd)])
    with pytest.raises(fm.InvalidArgumentError, match=r"^layers\[b\].inputs: expected indices of earlier layers"):
        Network([Dense(Wa), Dense(Wb, name="b", inputs=(3,)), Dense(Wc), Dense(Wd)])
    with pytest.raises(fm.InvalidArgumentError, match=r"^layers\[b\]: expected an output a later layer reads"):
        Network([Dense(Wa), Dense(Wb, name="b"), Dense(Wc, inputs=(0,)), Dense(Wd)])


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::fastmem.pathcond.PathCondWarning")
@pytest.mark.parametrize("name", TWINS)
def test_a_cuda_model_is_rescaled_on_its_device(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    make, shape = TWINS[name]
    model = make().cuda()
    x = torch.randn((3,) + shape, dtype=torch.float64, device="cuda")
    before = model(x).detach()
    want = pc.diag_G(_numpy_twin(pc.Network.from_torch(model, shape)))
    np.testing.assert_allclose(pc.diag_G(model, input_shape=shape), want, rtol=1e-12, atol=0)
    pc.rescale(model, input_shape=shape)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-10)


# ---- residual networks: torchvision's ResNets, block for block (fastmem.pathcond.models) ------

RESNETS = {"resnet18": ("conv1",), "resnet34": ("conv1",), "resnet50": ("conv1", "conv2")}


@pytest.mark.filterwarnings("ignore::fastmem.pathcond.PathCondWarning")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("depth", RESNETS)
def test_a_resnet_is_rescaled_with_its_function_preserved(depth, dtype, tol):
    model = _randomise_batchnorm(getattr(models, depth)(num_classes=10)).to(dtype).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    before = model(x).detach()
    state = {k: t.clone() for k, t in model.state_dict().items()}
    res = pc.rescale(model, input_shape=(3, 32, 32))
    after = model(x).detach()
    assert float((after - before).abs().max()) <= tol * float(before.abs().max())
    # inside each block, the outputs of every convolution but the last: the skip ties the others
    blocks = [name for name, m in model.named_modules() if isinstance(m, (models.BasicBlock,
                                                                          models.Bottleneck))]
    assert res.network.rescaled() == [f"{b}.{conv}" for b in blocks for conv in RESNETS[depth]]
    assert np.abs(res.z).max() > 0.05 and np.all(np.diff(res.objective) <= 1e-9 * abs(res.objective[0]))
    last = "conv2" if depth != "resnet50" else "conv3"
    moved = {f"{b}.{last}.weight" for b in blocks}  # the consumer of the block's last rescaled layer
    for b, c in itertools.product(blocks, RESNETS[depth]):
        moved |= {f"{b}.{c}.weight", f"{b}.bn{c[-1]}.bias", f"{b}.bn{c[-1]}.running_mean"}
    for key, t in model.state_dict().items():  # the stem, the skips, fc, gamma, the variances: untouched
        assert torch.equal(t, state[key]) != (key in moved), key


@pytest.mark.filterwarnings("ignore::fastmem.pathcond.PathCondWarning")
def test_diag_G_of_a_resnet_counts_the_paths_through_its_skips():
    # the first block without its skip: the skip adds paths through every parameter before the
    # block (and after it), so their G grows; G of the block's own convolutions cannot
    net = pc.Network.from_torch(_small_resnet(), (3, 8, 8))
    first = next(i for i, la in enumerate(net.layers) if isinstance(la, pc.Add))
    layers = list(net.layers)
    layers[first] = pc.Identity(name="no-skip", inputs=net.layers[first].inputs[:1])
    G, G0 = pc.diag_G(net), pc.diag_G(pc.Network(layers, net.input_shape))
    n_stem = net.params()[0].weight.numel()
    assert np.all(G[:n_stem] > G0[:n_stem]) and np.all(G[-99:-3] > G0[-99:-3])  # fc.weight, not its bias
    block = slice(n_stem, n_stem + net.params()[1].weight.numel() + net.params()[2].weight.numel())
    assert np.all(G[block] >= G0[block])


def test_the_compiled_solver_refuses_groups_that_are_not_chains():
    # for C++ embedders: a block shared by two groups that are not consecutive, or one read with
    # two shapes, would give wrong sums; the kernel says so instead
    from fastmem.backends import get

    pytest.importorskip("fastmem._core_baseline")
    net = pc.Network.from_torch(_mlp([3, 4, 5, 2]))
    G, groups = pc.diag_G(net), net.groups()
    solve = get("cpp", kernel="pathcond_solve").pathcond_solve
    z = np.zeros(groups[:, 0].sum() + groups[0, 0])
    with pytest.raises(ValueError, match="groups: chains"):
        solve(G, np.ascontiguousarray(np.vstack([groups, groups[:1]])), z, None, 0.0, 1, False)
    bad = groups.copy()
    bad[1, 2] += 1  # group 1's incoming rows one wider than group 0's outgoing block
    with pytest.raises(ValueError, match="groups: a shared block of one shape"):
        solve(G, np.ascontiguousarray(bad), np.zeros(groups[:, 0].sum()), None, 0.0, 1, False)
