"""The network PathCond works on: a chain of dense and convolutional layers with ReLU between
them, described by fastmem (arrays it can read and rescale in place), built from numpy arrays or
from a PyTorch ``nn.Sequential``.

Flat layout: the parameters in layer order, each layer's weight (C order) then its bias; diag G,
theta^2 and the solver's groups all use it.
"""

import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _validate as v


class PathCondWarning(UserWarning):
    """A layer where PathCond's rescaling or its kernel is not exact (named in the message)."""


@dataclass
class Dense:
    """y = W x + b; weight (out, in), bias (out,) or None."""

    weight: object
    bias: object = None
    name: str = "dense"


@dataclass
class Conv2d:
    """2-D cross-correlation; weight (C_out, C_in, kh, kw), bias (C_out,) or None; rescaled per
    output channel."""

    weight: object
    bias: object = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    name: str = "conv"


@dataclass
class Flatten:
    name: str = "flatten"


@dataclass
class MaxPool2d:
    """Max-pooling: the function is preserved (it commutes with positive scaling), but diag G
    through it is approximate: the all-ones forward keeps the maxima of its own values."""

    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0)
    name: str = "maxpool"


@dataclass
class Identity:
    """A layer diag G and the rescaling pass through unchanged (Dropout; BatchNorm, warned)."""

    name: str = "identity"


PARAM_LAYERS = (Dense, Conv2d)


def _pair(x):
    return (int(x), int(x)) if np.ndim(x) == 0 else tuple(int(a) for a in x)


@dataclass
class Network:
    """A feed-forward ReLU network: ``layers`` in order, ReLU after every parameterised layer but
    the last; ``input_shape`` (C, H, W) where the first parameterised layer is a convolution.

    The arrays are the caller's (numpy arrays, or PyTorch parameters on any device):
    ``rescale`` updates them in place."""

    layers: list
    input_shape: tuple = None

    def __post_init__(self):
        params = [la for la in self.layers if isinstance(la, PARAM_LAYERS)]
        if len(params) < 2:
            v.fail("layers", "at least two parameterised layers (one hidden layer to rescale)", len(params))
        for i, la in enumerate(self.layers):
            if isinstance(la, PARAM_LAYERS):
                _check_param(f"{la.name}.weight", la.weight, 4 if isinstance(la, Conv2d) else 2)
                if la.bias is not None:
                    _check_param(f"{la.name}.bias", la.bias, 1)
        self._check()

    @classmethod
    def mlp(cls, weights, biases=None):
        """A multilayer perceptron from weights [(n1, n0), (n2, n1), ...] and biases (or None)."""
        biases = [None] * len(weights) if biases is None else list(biases)
        if len(biases) != len(weights):
            v.fail("biases", f"{len(weights)} biases (or None), one per weight", len(biases))
        return cls([Dense(w, b, name=f"dense{i}") for i, (w, b) in enumerate(zip(weights, biases))])

    @classmethod
    def from_torch(cls, model, input_shape=None):
        """From a PyTorch module: an ``nn.Sequential`` of Linear, Conv2d, ReLU, Flatten,
        MaxPool2d, Dropout and BatchNorm layers (nested Sequentials flattened), or any
        ``nn.Module`` whose computation torch.fx captures as a chain of those (``F.relu`` /
        ``torch.relu``, ``torch.flatten``, ``x.view(x.size(0), -1)`` / ``reshape`` among them).
        BatchNorm and MaxPool2d are kept with a PathCondWarning saying why; any other layer or
        operation (a residual addition among them: its skip path is not a chain) is refused by
        name."""
        import torch.nn as nn

        if type(model).forward is nn.Sequential.forward:
            layers = []

            def walk(module, prefix):
                for name, child in module.named_children():
                    if isinstance(child, nn.Sequential):
                        walk(child, f"{prefix}{name}.")
                    else:
                        layers.extend(_layer_of(child, f"{prefix}{name}"))

            walk(model, "")
            return cls(layers, input_shape)
        return cls(_traced_layers(model), input_shape)

    # --- shapes and the flat layout ------------------------------------------------------------

    def params(self):
        return [la for la in self.layers if isinstance(la, PARAM_LAYERS)]

    def _check(self):
        """Shapes agree along the chain; records every layer's (input, output) shape."""
        first = self.params()[0]
        if isinstance(first, Conv2d):
            if self.input_shape is None or len(self.input_shape) != 3:
                v.fail("input_shape", "(C, H, W) for a network that starts with a convolution", self.input_shape)
            shape = tuple(int(s) for s in self.input_shape)
        else:
            shape = (int(_shape(first.weight)[1]),)
        self.shapes = []  # (input shape, output shape) of every layer
        for la in self.layers:
            out = _out_shape(la, shape)
            self.shapes.append((shape, out))
            shape = out
        for la in self.layers:
            if isinstance(la, MaxPool2d):
                warnings.warn(f"{la.name} (MaxPool2d): the rescaling preserves the function, but diag G through "
                              "max-pooling is approximate (the all-ones forward keeps its own maxima)",
                              PathCondWarning, stacklevel=4)

    def layout(self):
        """[(weight offset, bias offset or -1)] of the parameterised layers, and P."""
        out, off = [], 0
        for la in self.params():
            w = off
            off += int(np.prod(_shape(la.weight)))
            b = -1
            if la.bias is not None:
                b = off
                off += int(_shape(la.bias)[0])
            out.append((w, b))
        return out, off

    @property
    def n_params(self):
        return self.layout()[1]

    def groups(self):
        """The solver's (n, 7) int64 rows {H, in_offset, in_row, bias_offset, out_offset,
        out_outer, out_inner}: one per hidden parameterised layer."""
        params, (offsets, _) = self.params(), self.layout()
        idx = [i for i, la in enumerate(self.layers) if isinstance(la, PARAM_LAYERS)]
        rows = []
        for k in range(len(params) - 1):
            la, nxt = params[k], params[k + 1]
            ws = _shape(la.weight)
            H, in_row = ws[0], int(np.prod(ws[1:]))
            ns = _shape(nxt.weight)
            if isinstance(nxt, Conv2d):
                outer, inner = ns[0], ns[2] * ns[3]
                if ns[1] != H:
                    v.fail(f"layers[{nxt.name}]", f"{H} input channels", ns[1])
            else:
                inner = ns[1] // H  # a flatten in between: the spatial size of each channel
                outer = ns[0]
                if inner * H != ns[1] or self.shapes[idx[k + 1]][0] != (ns[1],):
                    v.fail(f"layers[{nxt.name}]", f"inputs of {H} neurons (x their spatial size)", ns[1])
            rows.append((H, offsets[k][0], in_row, offsets[k][1], offsets[k + 1][0], outer, inner))
        return np.array(rows, dtype=np.int64).reshape(-1, 7)

    def flat(self):
        """The parameters as one float64 vector (a copy), in the flat layout."""
        parts = []
        for la in self.params():
            parts.append(_to_numpy(la.weight).ravel())
            if la.bias is not None:
                parts.append(_to_numpy(la.bias).ravel())
        return np.concatenate(parts).astype(np.float64)

    def split(self, flat):
        """A flat (P,) vector as [(weight-shaped, bias-shaped or None)] per parameterised layer."""
        out, (offsets, P) = [], self.layout()
        flat = np.asarray(flat)
        if flat.shape != (P,):
            v.fail("flat", f"shape ({P},)", f"shape {flat.shape}")
        for la, (w, b) in zip(self.params(), offsets):
            ws = _shape(la.weight)
            out.append((flat[w:w + int(np.prod(ws))].reshape(ws),
                        None if b < 0 else flat[b:b + ws[0]]))
        return out

    def hidden_sizes(self):
        return [int(_shape(la.weight)[0]) for la in self.params()[:-1]]


def _layer_of(child, full):
    """The layers (none for a ReLU) of one PyTorch module, or a named error."""
    import torch.nn as nn

    if isinstance(child, nn.Linear):
        return [Dense(child.weight, child.bias, name=full)]
    if isinstance(child, nn.Conv2d):
        if child.groups != 1 or _pair(child.dilation) != (1, 1) or not isinstance(child.padding, tuple) \
                or child.padding_mode != "zeros":
            v.fail(f"model.{full}", "a Conv2d with groups=1, dilation 1 and numeric zero padding", repr(child))
        return [Conv2d(child.weight, child.bias, _pair(child.stride), _pair(child.padding), name=full)]
    if isinstance(child, nn.ReLU):
        return []
    if isinstance(child, nn.Dropout):
        return [Identity(name=full)]
    if isinstance(child, nn.Flatten):
        if child.start_dim != 1 or child.end_dim != -1:
            v.fail(f"model.{full}", "Flatten(start_dim=1, end_dim=-1)", repr(child))
        return [Flatten(name=full)]
    if isinstance(child, nn.MaxPool2d):
        if _pair(child.dilation) != (1, 1) or child.ceil_mode:
            v.fail(f"model.{full}", "a MaxPool2d with dilation 1 and ceil_mode False", repr(child))
        return [MaxPool2d(_pair(child.kernel_size), _pair(child.stride or child.kernel_size), _pair(child.padding),
                          name=full)]
    if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
        warnings.warn(f"model.{full} ({type(child).__name__}): PathCond preserves the network's function "
                      "through BatchNorm only in eval mode at initialisation (its parameters are not "
                      "rescaled, and batch statistics change with the scale); diag G leaves it out",
                      PathCondWarning, stacklevel=4)
        return [Identity(name=full)]
    v.fail(f"model.{full}", "Linear, Conv2d, ReLU, Flatten, MaxPool2d, Dropout or BatchNorm layers "
           "(residual blocks are not a chain: not supported)", type(child).__name__)


def _traced_layers(model):
    """The layers of any module whose torch.fx graph is a chain: each operation applied to the
    one before, shape queries (``x.size(0)``) aside. torch.fx rather than torch.export: symbolic
    tracing needs no example input and keeps the modules (their parameters are the ones
    rescaled in place); a module it cannot trace (a branch on the data) is refused by name."""
    import operator

    import torch
    import torch.fx as fx
    import torch.nn.functional as F

    if not list(model.children()):  # one layer (nn.Linear, ...): no graph to read
        return _layer_of(model, type(model).__name__)
    try:  # the graph alone (no GraphModule: its code generation took longer than the rescaling)
        graph = fx.Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - whatever tracing raises, the module is not one fastmem can read
        v.fail("model", "a module torch.fx can trace (no branch on the data)",
               f"{type(model).__name__} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    modules = dict(model.named_modules())
    layers, last, shapes = [], None, set()
    relus = (F.relu, torch.relu)
    for node in graph.nodes:
        what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
        if node.op == "placeholder":
            if last is not None:
                v.fail(f"model.{node.name}", "one input", "a second input")
            last = node
            continue
        size = node.op == "call_method" and node.target == "size"
        shape = node.op == "call_function" and node.target is getattr and node.args[1] == "shape"
        index = node.op == "call_function" and node.target is operator.getitem and node.args[0] in shapes
        if size or shape or index:
            shapes.add(node)  # x.size(0), x.shape[0]: the batch size for a view, not a layer
            continue
        if node.op == "get_attr":
            v.fail(f"model.{node.name}", "parameters used through their modules (nn.Linear, nn.Conv2d), which "
                   "fastmem rescales", f"{what} in a functional call")
        inputs = [a for a in node.all_input_nodes if a not in shapes]
        if node.op == "output":
            if inputs != [last]:
                v.fail("model", "one output, the last operation's", [a.name for a in inputs])
            break
        if inputs != [last]:
            v.fail(f"model.{node.name}", "a chain, each operation on the one before (a residual addition or a "
                   "second branch is not supported)", f"{what} on {[a.name for a in inputs]}")
        if node.op == "call_module":
            layers.extend(_layer_of(modules[node.target], node.target))
        elif (node.op == "call_function" and node.target in relus) or (node.op == "call_method"
                                                                          and node.target in ("relu", "relu_")):
            pass  # ReLU: the network's nonlinearity between its layers
        elif _flattens(node, shapes):
            layers.append(Flatten(name=node.name))
        elif node.op == "call_function" and node.target is F.dropout:
            layers.append(Identity(name=node.name))
        else:
            v.fail(f"model.{node.name}", "Linear, Conv2d, ReLU (module or F.relu / torch.relu), flatten / view / "
                   "reshape to (batch, -1), MaxPool2d, Dropout or BatchNorm", what)
        last = node
    return layers


def _flattens(node, shapes):
    """torch.flatten(x, 1), x.flatten(1), x.view(x.size(0), -1), x.reshape(x.shape[0], -1)."""
    import torch

    args = list(node.args[1:]) + [node.kwargs.get(k) for k in ("start_dim",) if k in node.kwargs]
    if (node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method"
                                                                         and node.target == "flatten"):
        return args[:1] == [1] and node.kwargs.get("end_dim", -1) == -1 and (len(args) < 2 or args[1] == -1)
    if node.op == "call_method" and node.target in ("view", "reshape"):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(dims) == 2 and dims[0] in shapes and dims[1] == -1
    return False


def _check_param(name, a, ndim):
    """A layer's array: a float32/float64 numpy array or PyTorch tensor with data, of ndim dims."""
    if isinstance(a, np.ndarray):
        dtype, where = a.dtype, None
    elif type(a).__module__.startswith("torch") and hasattr(a, "detach"):
        dtype, where = str(a.dtype).replace("torch.", ""), a.device.type
        if where == "meta":
            v.fail(name, "a tensor with data", "a tensor on the meta device")
    else:
        v.fail(name, "a numpy array or a PyTorch tensor", type(a).__name__)
    if str(dtype) not in ("float32", "float64"):
        v.fail(name, "float32 or float64 values", f"dtype {dtype}")
    if a.ndim != ndim:
        v.fail(name, f"a {ndim}-D array", f"shape {tuple(a.shape)}")


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # a PyTorch tensor, on any device
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _out_shape(la, shape):
    if isinstance(la, Dense):
        ws = _shape(la.weight)
        if len(ws) != 2 or shape != (ws[1],):
            v.fail(f"layers[{la.name}]", f"a (out, {int(np.prod(shape))}) weight after an input of shape {shape}",
                   f"weight {ws}")
        _bias(la, ws[0])
        return (ws[0],)
    if isinstance(la, Conv2d):
        ws = _shape(la.weight)
        if len(ws) != 4 or len(shape) != 3 or shape[0] != ws[1]:
            v.fail(f"layers[{la.name}]", f"a (C_out, {shape[0] if shape else '?'}, kh, kw) weight after an input of "
                   f"shape {shape}", f"weight {ws}")
        _bias(la, ws[0])
        return (ws[0],) + _windows(shape, ws[2:], la.stride, la.padding)
    if isinstance(la, Flatten):
        return (int(np.prod(shape)),)
    if isinstance(la, MaxPool2d):
        return (shape[0],) + _windows(shape, la.kernel, la.stride, la.padding)
    return shape


def _windows(shape, kernel, stride, padding):
    """(H_out, W_out) of a sliding window over a (C, H, W) input."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(shape[1:], kernel, stride, padding))


def _bias(la, n):
    if la.bias is not None and _shape(la.bias) != (n,):
        v.fail(f"layers[{la.name}].bias", f"shape ({n},)", f"shape {_shape(la.bias)}")


def as_network(model, input_shape=None):
    """A Network from a Network, or a PyTorch module (Network.from_torch)."""
    if isinstance(model, Network):
        return model
    torch = sys.modules.get("torch")  # a user's nn.Module subclass lives in the user's module
    if torch is not None and isinstance(model, torch.nn.Module):
        return Network.from_torch(model, input_shape)
    v.fail("model", "a fastmem.pathcond.Network or a PyTorch nn.Module", type(model).__name__)
