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


NETS = {
    "mlp": (lambda: _mlp([3, 4, 5, 2]), None),
    "mlp-no-bias": (lambda: _mlp([3, 4, 5, 2], bias=False), None),
    "mlp-deep": (lambda: _mlp([2, 3, 3, 3, 2], seed=3), None),
    "conv": (lambda: _convnet(), (2, 4, 4)),
    "conv-no-bias": (lambda: _convnet(bias=False), (2, 4, 4)),
}


# ---- diag G ----------------------------------------------------------------------------------

def _unrolled(net):
    """Each parameterised layer as a dense map: (matrix of parameter indices or -1, bias index
    per output unit or -1), on the flattened activations; weights shared by a convolution keep
    their one index."""
    (offsets, _), maps = net.layout(), []
    k = 0
    for la, (shape_in, shape_out) in zip(net.layers, net.shapes):
        if isinstance(la, pc.Dense):
            w, b = offsets[k]
            out, inn = la.weight.shape
            maps.append((w + np.arange(out * inn).reshape(out, inn), b + np.arange(out) if b >= 0 else -np.ones(out, int)))
            k += 1
        elif isinstance(la, pc.Conv2d):
            w, b = offsets[k]
            Co, Ci, kh, kw = la.weight.shape
            _, H, W = shape_in
            _, Ho, Wo = shape_out
            M = -np.ones((Co * Ho * Wo, Ci * H * W), int)
            for co, y, x, ci, u, v in itertools.product(range(Co), range(Ho), range(Wo), range(Ci), range(kh), range(kw)):
                yy, xx = y * la.stride[0] + u - la.padding[0], x * la.stride[1] + v - la.padding[1]
                if 0 <= yy < H and 0 <= xx < W:
                    M[(co * Ho + y) * Wo + x, (ci * H + yy) * W + xx] = w + ((co * Ci + ci) * kh + u) * kw + v
            bias = np.repeat(b + np.arange(Co), Ho * Wo) if b >= 0 else -np.ones(Co * Ho * Wo, int)
            maps.append((M, bias))
            k += 1
    return maps


def _brute_force_G(net):
    """G_ii = sum over the paths p through parameter i of prod_{j in p, j != i} theta_j^2, every
    path enumerated: from an input unit, or from a bias, through one unit per layer to an output."""
    theta2 = np.square(net.flat())
    maps = _unrolled(net)
    G = np.zeros_like(theta2)

    def walk(layer, unit, edges):
        if layer == len(maps):
            prod = np.prod(theta2[edges]) if edges else 1.0
            for e in edges:
                G[e] += prod / theta2[e]
            return
        M, _ = maps[layer]
        for nxt in np.flatnonzero(M[:, unit] >= 0):
            walk(layer + 1, nxt, edges + [M[nxt, unit]])

    for unit in range(maps[0][0].shape[1]):
        walk(0, unit, [])
    for layer, (_, bias) in enumerate(maps):
        for unit, b in enumerate(bias):
            if b >= 0:
                walk(layer + 1, unit, [b])
    return G


@pytest.mark.parametrize("name", NETS)
def test_diag_G_equals_path_enumeration(name):
    make, shape = NETS[name]
    net = pc.Network.from_torch(make(), shape)
    np.testing.assert_allclose(pc.diag_G(net), _brute_force_G(net), rtol=1e-12)


@pytest.mark.parametrize("name", NETS)
def test_diag_G_equals_autograd(name):
    from torch_pathcond import diag_G

    make, shape = NETS[name]
    model = make()
    np.testing.assert_allclose(pc.diag_G(model, shape), diag_G(model, shape or (model[0].in_features,)).numpy(),
                               rtol=1e-12)


# ---- the rescaling ---------------------------------------------------------------------------

def _inputs(shape, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + tuple(shape), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", NETS)
def test_the_function_is_preserved(name, dtype, tol):
    make, shape = NETS[name]
    model = make().to(dtype)
    x = _inputs(shape or (model[0].in_features,)).to(dtype)
    before = model(x).detach()
    res = pc.rescale(model, input_shape=shape)
    after = model(x).detach()
    assert np.abs(res.z).max() > 0.05  # something moved
    assert float((after - before).abs().max()) <= tol * max(1.0, float(before.abs().max()))


@pytest.mark.parametrize("name", NETS)
def test_G_of_the_rescaled_network_is_G_times_e_to_the_Bz(name):
    make, shape = NETS[name]
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
    make, shape = NETS[name]
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
    make, shape = NETS[name]
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


@pytest.mark.parametrize("name", NETS)
def test_z_equals_a_pytorch_port_of_the_authors_solver(name):
    import torch_pathcond

    make, shape = NETS[name]
    model = make()
    want_z, want_F = torch_pathcond.solve(model, shape or (model[0].in_features,), sweeps=10, tol=1e-2)
    res = pc.rescale(model, input_shape=shape, sweeps=10, tol=1e-2)
    np.testing.assert_allclose(res.z, want_z, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.objective, want_F, rtol=1e-8)


# ---- layers, warnings, errors ------------------------------------------------------------------

def test_maxpool_and_batchnorm_are_kept_with_a_warning_naming_them():
    with pytest.warns(pc.PathCondWarning, match=r"4 \(MaxPool2d\): .*approximate"):
        net = pc.Network.from_torch(_convnet(pool=True), (2, 4, 4))
    model = _convnet(pool=True)
    x = _inputs((2, 4, 4))
    before = model(x).detach()
    with pytest.warns(pc.PathCondWarning):
        pc.rescale(model, input_shape=(2, 4, 4))
    assert float((model(x).detach() - before).abs().max()) < 1e-12  # max-pooling commutes with the scaling
    assert net.n_params > 0
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(pc.PathCondWarning, match=r"model.1 \(BatchNorm1d\): .*eval mode at initialisation"):
        pc.Network.from_torch(bn)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.inner(x)


@pytest.mark.parametrize("model, match", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), r"^model.1: expected .*got Tanh"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _Residual(), nn.Linear(4, 2)), r"^model.2: .*residual"),
    (lambda: nn.Linear(3, 4), r"^layers: expected at least two"),
    (lambda: nn.Sequential(nn.Linear(3, 4)), r"^layers: expected at least two"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), r"^layers\[2\]: expected"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2)), r"^model.2: expected"),
    (lambda: "a model", r"^model: expected"),
])
def test_unsupported_models_are_refused_by_name(model, match):
    with pytest.raises(fm.InvalidArgumentError, match=match):
        pc.rescale(model(), input_shape=(1, 5, 5))


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


class _ResidualModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(F.relu(self.b(h) + h))


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
    (_ResidualModule, r"^model.add: expected a chain.*residual addition.*got call_function add on \['b', 'relu'\]"),
    (_BranchOnData, r"^model: expected a module torch.fx can trace .*got _BranchOnData \(TraceError"),
    (_Gelu, r"^model.gelu: expected Linear, Conv2d, ReLU .*got call_function gelu"),
])
def test_a_module_that_is_not_a_chain_of_known_operations_is_refused_by_node(make, match):
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
    with torch.no_grad():
        model[0].weight[1] = 0.0  # neuron 1 has no incoming path: its G entries vanish
        model[0].bias[1] = 0.0
    with pytest.raises(fm.InvalidArgumentError, match=r"^G: expected .*positive"):
        pc.rescale(model)


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
        if "weight" in d:
            d["weight"] = la.weight.detach().cpu().numpy().copy()
            d["bias"] = None if la.bias is None else la.bias.detach().cpu().numpy().copy()
        return type(la)(**d)
    return pc.Network([twin(la) for la in net.layers], net.input_shape)


def _conv_pool_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2, bias=False)).double()


@pytest.mark.filterwarnings("ignore::fastmem.pathcond.network.PathCondWarning")
def test_diag_G_of_a_torch_model_is_taken_with_torch_on_its_device(monkeypatch):
    # torch operations on the parameters' device, the result to the host once: the same G as the
    # numpy path; no parameter goes to the host by itself (the numpy path's _to_numpy refuses here)
    from fastmem.pathcond import kernel, network

    net = pc.Network.from_torch(_conv_pool_net(), (2, 8, 8))
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
    model = _conv_pool_net()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    before = model(x).detach()
    pc.rescale(model, input_shape=(2, 8, 8))  # the whole rescaling through the same path
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::fastmem.pathcond.network.PathCondWarning")
def test_a_cuda_model_is_rescaled_on_its_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = _conv_pool_net().cuda()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, device="cuda")
    before = model(x).detach()
    want = pc.diag_G(_numpy_twin(pc.Network.from_torch(model, (2, 8, 8))))
    np.testing.assert_allclose(pc.diag_G(model, input_shape=(2, 8, 8)), want, rtol=1e-12, atol=0)
    pc.rescale(model, input_shape=(2, 8, 8))
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-10)
