"""The network PathCond works on: dense and convolutional layers with ReLU (positively homogeneous
operations) between them, in a chain or with residual additions, described by fastmem (arrays it
can read and rescale in place), built from numpy arrays or read from a PyTorch module's torch.fx
graph.

Flat layout: the parameters in layer order, each layer's weight (C order) then its bias; diag G,
theta^2 and the solver's groups all use it. BatchNorm's parameters are not in it (as in the
authors' code: docs/pathcond.md).
"""

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _validate as v


class PathCondWarning(UserWarning):
    """A layer where PathCond's rescaling or its kernel is not exact (named in the message)."""


# Every layer reads ``inputs``: the indices of earlier layers in ``Network.layers`` (-1: the
# network's input); None reads the layer before it (the network's input for the first).

@dataclass
class Dense:
    """y = W x + b; weight (out, in), bias (out,) or None."""

    weight: object
    bias: object = None
    name: str = "dense"
    inputs: tuple = None


@dataclass
class Conv2d:
    """2-D cross-correlation; weight (C_out, C_in, kh, kw), bias (C_out,) or None; rescaled per
    output channel."""

    weight: object
    bias: object = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    name: str = "conv"
    inputs: tuple = None


@dataclass
class Flatten:
    name: str = "flatten"
    inputs: tuple = None


@dataclass
class MaxPool2d:
    """Max-pooling: the function is preserved (it commutes with positive scaling), but diag G
    through it is approximate: the all-ones forward keeps the maxima of its own values."""

    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0)
    name: str = "maxpool"
    inputs: tuple = None


@dataclass
class AvgPool2d:
    """Average pooling (zero padding; ``count_include_pad`` as PyTorch's): a linear layer of
    fixed weights 1 / (window size), which the path-lifting counts (squared) like any other."""

    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0)
    count_include_pad: bool = True
    name: str = "avgpool"
    inputs: tuple = None


@dataclass
class AdaptiveAvgPool2d:
    """PyTorch's adaptive average pooling to ``output_size`` (H_out, W_out): window i of an axis
    of n covers [floor(i n / out), ceil((i + 1) n / out))."""

    output_size: tuple = (1, 1)
    name: str = "avgpool"
    inputs: tuple = None


@dataclass
class BatchNorm:
    """BatchNorm in eval mode, y = gamma (x - running_mean) / sqrt(running_var + eps) + bias, per
    channel (per feature after a flatten). As in the authors' code it is the identity for diag G
    and its parameters are not in the flat layout; a rescaling of the channels it carries scales
    ``bias`` and ``running_mean`` with them, which keeps its output exactly proportional (gamma
    and the variance stay). ``batch_stats``: it normalises with each batch's statistics
    (training mode), which no rescaling of the layers before it survives: refused there."""

    bias: object = None
    running_mean: object = None
    batch_stats: bool = False
    name: str = "batchnorm"
    inputs: tuple = None


@dataclass
class Identity:
    """A layer diag G and the rescaling pass through unchanged (Dropout)."""

    name: str = "identity"
    inputs: tuple = None


@dataclass
class Add:
    """The sum of ``inputs`` (two or more earlier layers of one shape): a residual connection.
    The channels it sums are tied (a skip carries them unscaled), so the layers that write them
    keep their scale; diag G counts the paths through every branch."""

    inputs: tuple = None
    name: str = "add"


PARAM_LAYERS = (Dense, Conv2d)
_CHANNEL_WISE = (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm, Identity, Flatten)  # carry a channel's scale


@dataclass
class RescaledLayer:
    """One layer whose outputs (neurons or channels) PathCond rescales: ``producer`` and
    ``consumer`` are indices in Network.layers, ``batchnorms`` [(index, features per channel)]
    of the BatchNorm layers between them, ``inner`` the consumer's inputs per channel (a flatten's
    spatial size; 1 otherwise)."""

    producer: int
    consumer: int
    batchnorms: list
    inner: int


def _pair(x):
    return (int(x), int(x)) if np.ndim(x) == 0 else tuple(int(a) for a in x)


@dataclass
class Network:
    """A feed-forward ReLU network: ``layers`` in order, each reading the layer before it or the
    ones its ``inputs`` name (a residual ``Add``); the last layer's output is the network's;
    ``input_shape`` (C, H, W) where the first parameterised layer is a convolution. ReLU (and
    any positively homogeneous operation) may stand between any two layers: PathCond's rescaling
    and diag G do not depend on where.

    The layers whose outputs are rescaled (``rescaled``) are the parameterised ones whose every
    output channel reaches exactly one parameterised layer through channel-wise operations (ReLU,
    BatchNorm, pooling, dropout, a flatten before a dense layer); a channel that reaches a
    residual addition, a second branch or the network's output keeps its scale.

    The arrays are the caller's (numpy arrays, or PyTorch parameters on one device): ``rescale``
    updates them in place."""

    layers: list
    input_shape: tuple = None

    def __post_init__(self):
        params = [la for la in self.layers if isinstance(la, PARAM_LAYERS)]
        if len(params) < 2:
            v.fail("layers", "at least two parameterised layers (one hidden layer to rescale)", len(params))
        kinds = {}
        for la in self.layers:
            arrays = [("weight", la.weight, 4 if isinstance(la, Conv2d) else 2), ("bias", la.bias, 1)] \
                if isinstance(la, PARAM_LAYERS) else [("bias", la.bias, 1), ("running_mean", la.running_mean, 1)] \
                if isinstance(la, BatchNorm) else []
            for what, a, ndim in arrays:
                if a is not None or what == "weight":
                    kinds.setdefault(_check_param(f"{la.name}.{what}", a, ndim), f"{la.name}.{what}")
        if len(kinds) > 1:
            v.fail("model", "every parameter on one device (the rescaling and diag G run where they are)",
                   ", ".join(f"{name} on {kind}" for kind, name in kinds.items()))
        self._wire()
        self._check()
        self._rescaled = self._find_rescaled()
        if not self._rescaled:
            v.fail("layers", "a hidden layer whose outputs can be rescaled (each read by one parameterised layer, "
                   "through ReLU, BatchNorm, pooling or a flatten, not by a residual addition)", "none")
        self._warn()

    @classmethod
    def mlp(cls, weights, biases=None):
        """A multilayer perceptron from weights [(n1, n0), (n2, n1), ...] and biases (or None)."""
        biases = [None] * len(weights) if biases is None else list(biases)
        if len(biases) != len(weights):
            v.fail("biases", f"{len(weights)} biases (or None), one per weight", len(biases))
        return cls([Dense(w, b, name=f"dense{i}") for i, (w, b) in enumerate(zip(weights, biases))])

    @classmethod
    def from_torch(cls, model, input_shape=None):
        """From any PyTorch ``nn.Module`` whose computation torch.fx captures from Linear,
        Conv2d, ReLU (module, ``F.relu``, ``torch.relu``), flatten / view / reshape to
        (batch, -1), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout, BatchNorm (eval mode) and
        residual additions (``out += identity``): nn.Sequential, the authors' model classes,
        torchvision's ResNets. BatchNorm and MaxPool2d are kept with a PathCondWarning saying
        why; any other operation is refused with its node's name."""
        layers, relus = _traced_layers(model, 2 if input_shape is None else 1 + len(input_shape))
        net = cls(layers, input_shape)
        if not relus:
            v.fail("model", "a ReLU network (PathCond's rescaling is ReLU's positive homogeneity)", "no ReLU")
        return net

    # --- the graph, shapes and the flat layout ------------------------------------------------

    def params(self):
        return [la for la in self.layers if isinstance(la, PARAM_LAYERS)]

    def _wire(self):
        """self.inputs[i]: the layers layer i reads (-1: the network's input); self.readers[i]:
        the layers that read layer i. Every layer but the last is read."""
        self.inputs, self.readers = [], [[] for _ in self.layers]
        for i, la in enumerate(self.layers):
            ins = (i - 1,) if la.inputs is None else la.inputs
            if not isinstance(ins, (tuple, list)) or not all(isinstance(j, (int, np.integer)) and -1 <= j < i
                                                             for j in ins):
                v.fail(f"layers[{la.name}].inputs", "indices of earlier layers (-1: the network's input)", ins)
            if not (len(ins) >= 2 if isinstance(la, Add) else len(ins) == 1):
                v.fail(f"layers[{la.name}].inputs", "two or more layers (an Add)" if isinstance(la, Add)
                       else "one layer", tuple(ins))
            self.inputs.append(tuple(int(j) for j in ins))
            for j in ins:
                if j >= 0:
                    self.readers[j].append(i)
        for i, la in enumerate(self.layers[:-1]):
            if not self.readers[i]:
                v.fail(f"layers[{la.name}]", "an output a later layer reads (the network's output is the last "
                       "layer's)", "an output nothing reads")

    def _check(self):
        """Shapes agree along the graph; records every layer's (input, output) shape."""
        first = self.params()[0]
        if self.input_shape is not None:
            if not isinstance(self.input_shape, (tuple, list)) or not 1 <= len(self.input_shape) <= 3:
                v.fail("input_shape", "(C, H, W) or (features,)", self.input_shape)
            shape = tuple(int(s) for s in self.input_shape)
        elif isinstance(first, Conv2d):
            v.fail("input_shape", "(C, H, W) for a network that starts with a convolution", self.input_shape)
        else:
            shape = (int(_shape(first.weight)[1]),)
        outs = []
        self.shapes = []  # (input shape, output shape) of every layer
        for i, la in enumerate(self.layers):
            ins = [shape if j < 0 else outs[j] for j in self.inputs[i]]
            if any(s != ins[0] for s in ins):
                v.fail(f"layers[{la.name}]", "inputs of one shape", ins)
            outs.append(_out_shape(la, ins[0]))
            self.shapes.append((ins[0], outs[-1]))

    def _warn(self):
        pools = [la.name for la in self.layers if isinstance(la, MaxPool2d)]
        if pools:
            warnings.warn(f"{_names(pools)} (MaxPool2d): the rescaling preserves the function, but diag G through "
                          "max-pooling is approximate (the all-ones forward keeps its own maxima)",
                          PathCondWarning, stacklevel=4)
        norms = [la.name for la in self.layers if isinstance(la, BatchNorm)]
        if norms:
            warnings.warn(f"{_names(norms)} (BatchNorm): diag G takes it as the identity and its parameters are "
                          "not rescaled by the solver (as in the authors' code); the function is kept exactly in "
                          "eval mode (its bias and running mean are scaled with the channels it carries)",
                          PathCondWarning, stacklevel=4)

    def _find_rescaled(self):
        """The RescaledLayers, ordered so that a chain of them (one's consumer the next one's
        producer) is consecutive: the solver's groups (kernels/pathcond.hpp) share their blocks."""
        found = {}
        for i, la in enumerate(self.layers):
            if not isinstance(la, PARAM_LAYERS):
                continue
            node, inner, norms = i, 1, []
            while len(self.readers[node]) == 1 and isinstance(self.layers[self.readers[node][0]], _CHANNEL_WISE):
                node = self.readers[node][0]
                mid = self.layers[node]
                if isinstance(mid, Flatten):
                    inner *= math.prod(self.shapes[node][0][1:])
                elif isinstance(mid, BatchNorm):
                    norms.append((node, inner))
            if len(self.readers[node]) != 1 or not isinstance(self.layers[self.readers[node][0]], PARAM_LAYERS):
                continue  # read by an addition, two layers or the output: tied, kept
            consumer = self.readers[node][0]
            if isinstance(self.layers[consumer], Conv2d) and inner != 1:
                continue  # a flatten then a convolution: not a channel of it
            for j, _ in norms:
                if self.layers[j].batch_stats:
                    v.fail(f"model.{self.layers[j].name}", "BatchNorm in eval mode (model.eval()): in training mode "
                           "it normalises each batch with its own statistics, which undo a rescaling of the channels "
                           "before it", "training mode")
            found[i] = RescaledLayer(i, consumer, norms, inner)
        ordered, produced = [], set(r.consumer for r in found.values())
        for i in sorted(found):
            if i in produced:
                continue  # reached from the head of its chain
            while i in found:
                ordered.append(found[i])
                i = found[i].consumer
        return ordered

    def rescaled(self):
        """The names of the layers whose outputs are rescaled, in the order of z."""
        return [self.layers[r.producer].name for r in self._rescaled]

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
        out_outer, out_inner}: one per rescaled layer (kernels/pathcond.hpp)."""
        offsets = dict(zip((id(la) for la in self.params()), self.layout()[0]))
        rows = []
        for r in self._rescaled:
            la, nxt = self.layers[r.producer], self.layers[r.consumer]
            ws, ns = _shape(la.weight), _shape(nxt.weight)
            H = ws[0]
            if isinstance(nxt, Conv2d):
                outer, inner = ns[0], ns[2] * ns[3]
            else:  # dense: its inputs are the H neurons, each over its spatial size after a flatten
                outer, inner = ns[0], r.inner
            (w_in, b_in), (w_out, _) = offsets[id(la)], offsets[id(nxt)]
            rows.append((H, w_in, int(np.prod(ws[1:])), b_in, w_out, outer, inner))
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
        """Neurons (channels) of each rescaled layer, in the order of z."""
        return [int(_shape(self.layers[r.producer].weight)[0]) for r in self._rescaled]


def _names(names, most=4):
    return ", ".join(f"model.{n}" for n in names[:most]) + (f" and {len(names) - most} more" if len(names) > most
                                                            else "")


def _layer_of(child, full):
    """The layer of one PyTorch leaf module (None for a ReLU or nn.Identity), or a named error."""
    import torch.nn as nn

    if isinstance(child, nn.Linear):
        return Dense(child.weight, child.bias, name=full)
    if isinstance(child, nn.Conv2d):
        if child.groups != 1 or _pair(child.dilation) != (1, 1) or not isinstance(child.padding, tuple) \
                or child.padding_mode != "zeros":
            v.fail(f"model.{full}", "a Conv2d with groups=1, dilation 1 and numeric zero padding", repr(child))
        return Conv2d(child.weight, child.bias, _pair(child.stride), _pair(child.padding), name=full)
    if isinstance(child, (nn.ReLU, nn.Identity)):
        return None
    if isinstance(child, (nn.Dropout, nn.Dropout2d)):
        return Identity(name=full)
    if isinstance(child, nn.Flatten):
        if child.start_dim != 1 or child.end_dim != -1:
            v.fail(f"model.{full}", "Flatten(start_dim=1, end_dim=-1)", repr(child))
        return Flatten(name=full)
    if isinstance(child, nn.MaxPool2d):
        if _pair(child.dilation) != (1, 1) or child.ceil_mode or child.return_indices:
            v.fail(f"model.{full}", "a MaxPool2d with dilation 1 and ceil_mode False", repr(child))
        return MaxPool2d(_pair(child.kernel_size), _pair(child.stride or child.kernel_size), _pair(child.padding),
                         name=full)
    if isinstance(child, nn.AvgPool2d):
        if child.ceil_mode or child.divisor_override is not None:
            v.fail(f"model.{full}", "an AvgPool2d with ceil_mode False and no divisor_override", repr(child))
        return AvgPool2d(_pair(child.kernel_size), _pair(child.stride or child.kernel_size), _pair(child.padding),
                         bool(child.count_include_pad), name=full)
    if isinstance(child, nn.AdaptiveAvgPool2d):
        size = child.output_size
        return AdaptiveAvgPool2d((size, size) if size is None or np.ndim(size) == 0 else tuple(size), name=full)
    if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return BatchNorm(child.bias, child.running_mean, child.training or child.running_mean is None, name=full)
    v.fail(f"model.{full}", "Linear, Conv2d, ReLU, Flatten, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout or "
           "BatchNorm layers (and residual additions between them)", type(child).__name__)


def _traced_layers(model, rank=2):
    """The layers of a module, read from its torch.fx graph, and how many ReLUs it applies.
    torch.fx rather than torch.export: symbolic tracing needs no example input and keeps the
    modules (their parameters are the ones rescaled in place); a module it cannot trace (a
    branch on the data) is refused by name, but the input's rank (``rank``, with the batch) is
    known, so a branch on ``x.dim()`` / ``x.ndim`` reads it (the authors' MLP_BN flattens only
    inputs of more than two dimensions). A ReLU, nn.Identity and shape queries (``x.size(0)``)
    are not layers: what reads them reads their input."""
    import operator

    import torch
    import torch.fx as fx
    import torch.nn as nn
    import torch.nn.functional as F

    if not list(model.children()):  # one layer (nn.Linear, ...): no graph to read
        la = _layer_of(model, type(model).__name__)
        return ([] if la is None else [la]), int(isinstance(model, nn.ReLU))
    class Input(fx.Proxy):
        def dim(self):
            return rank

        @property
        def ndim(self):
            return rank

    class Tracer(fx.Tracer):
        def proxy(self, node):
            return Input(node, self) if node.op == "placeholder" else super().proxy(node)

    try:  # the graph alone (no GraphModule: its code generation took longer than the rescaling)
        graph = Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - whatever tracing raises, the module is not one fastmem can read
        v.fail("model", "a module torch.fx can trace (no branch on the data)",
               f"{type(model).__name__} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    modules = dict(model.named_modules())
    layers, where, shapes, relus = [], {}, set(), 0  # where: fx node -> index in layers (-1: the input)
    pools = {F.max_pool2d: nn.MaxPool2d, torch.max_pool2d: nn.MaxPool2d, F.avg_pool2d: nn.AvgPool2d,
             F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}
    additions = (operator.add, operator.iadd, torch.add)

    def layer(la, inputs):
        la.inputs = tuple(where[a] for a in inputs)
        layers.append(la)
        return len(layers) - 1

    for node in graph.nodes:
        what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
        if node.op == "placeholder":
            if where:
                v.fail(f"model.{node.name}", "one input", "a second input")
            where[node] = -1
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
            if len(inputs) != 1 or where[inputs[0]] != len(layers) - 1:
                v.fail("model", "one output, the last layer's", [a.name for a in inputs])
            break
        adds = (node.op == "call_function" and node.target in additions) or (node.op == "call_method"
                                                                            and node.target in ("add", "add_"))
        if adds and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args):
            where[node] = layer(Add(name=node.name), node.args)  # a residual connection
            continue
        if len(inputs) != 1:
            v.fail(f"model.{node.name}", "operations on one tensor, or the addition of two (a residual connection)",
                   f"{what} on {[a.name for a in inputs]}")
        if node.op == "call_module":
            module = modules[node.target]
            la = _layer_of(module, node.target)
            if la is None:  # ReLU, nn.Identity
                relus += isinstance(module, nn.ReLU)
                where[node] = where[inputs[0]]
            else:
                where[node] = layer(la, inputs)
        elif (node.op == "call_function" and node.target in (F.relu, torch.relu)) or (
                node.op == "call_method" and node.target in ("relu", "relu_")):
            relus += 1  # the network's nonlinearity: what reads it reads its input
            where[node] = where[inputs[0]]
        elif node.op == "call_function" and node.target in pools:
            where[node] = layer(_layer_of(pools[node.target](*node.args[1:], **node.kwargs), node.name), inputs)
        elif _flattens(node, shapes):
            where[node] = layer(Flatten(name=node.name), inputs)
        elif node.op == "call_function" and node.target is F.dropout:
            where[node] = layer(Identity(name=node.name), inputs)
        else:
            v.fail(f"model.{node.name}", "Linear, Conv2d, ReLU (module or F.relu / torch.relu), flatten / view / "
                   "reshape to (batch, -1), max or average pooling, Dropout, BatchNorm or a residual addition", what)
    return layers, relus


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
    """A layer's array: a float32/float64 numpy array or PyTorch tensor with data, of ndim dims.
    Returns where it lives ("numpy", or the tensor's device)."""
    if isinstance(a, np.ndarray):
        dtype, where = a.dtype, "numpy"
    elif type(a).__module__.startswith("torch") and hasattr(a, "detach"):
        dtype, where = str(a.dtype).replace("torch.", ""), f"torch {a.device}"
        if a.device.type == "meta":
            v.fail(name, "a tensor with data", "a tensor on the meta device")
    else:
        v.fail(name, "a numpy array or a PyTorch tensor", type(a).__name__)
    if str(dtype) not in ("float32", "float64"):
        v.fail(name, "float32 or float64 values", f"dtype {dtype}")
    if a.ndim != ndim:
        v.fail(name, f"a {ndim}-D array", f"shape {tuple(a.shape)}")
    return where


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
    if isinstance(la, (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d)):
        if len(shape) != 3:
            v.fail(f"layers[{la.name}]", "a (C, H, W) input", f"shape {shape}")
        if isinstance(la, AdaptiveAvgPool2d):
            return (shape[0],) + tuple(n if o is None else int(o) for n, o in zip(shape[1:], la.output_size))
        return (shape[0],) + _windows(shape, la.kernel, la.stride, la.padding)
    if isinstance(la, BatchNorm):
        for what in ("bias", "running_mean"):
            a = getattr(la, what)
            if a is not None and _shape(a) != shape[:1]:
                v.fail(f"layers[{la.name}].{what}", f"shape ({shape[0]},), one per channel", f"shape {_shape(a)}")
    return shape


def _windows(shape, kernel, stride, padding):
    """(H_out, W_out) of a sliding window over a (C, H, W) input."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(shape[1:], kernel, stride, padding))


def _bias(la, n):
    if la.bias is not None and _shape(la.bias) != (n,):
        v.fail(f"layers[{la.name}].bias", f"shape ({n},)", f"shape {_shape(la.bias)}")


def pool_weights(la, shape):
    """The per-axis matrices (H_out, H) and (W_out, W) of an average pooling of a (C, H, W) input:
    the layer is a[c] -> Ah @ a[c] @ Aw.T (a window's weight 1 / its size factors over the axes,
    padded positions dropped; counted in the size where ``count_include_pad``)."""
    mats = []
    for axis, n in enumerate(shape[1:]):
        if isinstance(la, AdaptiveAvgPool2d):
            out = n if la.output_size[axis] is None else int(la.output_size[axis])
            starts = [i * n // out for i in range(out)]
            ends = [-(-(i + 1) * n // out) for i in range(out)]
            sizes = [e - b for b, e in zip(starts, ends)]
        else:
            k, s, p = la.kernel[axis], la.stride[axis], la.padding[axis]
            out = (n + 2 * p - k) // s + 1
            starts = [i * s - p for i in range(out)]
            ends = [b + k for b in starts]
            sizes = [k if la.count_include_pad else min(e, n) - max(b, 0) for b, e in zip(starts, ends)]
        A = np.zeros((out, n))
        for i, (b, e, size) in enumerate(zip(starts, ends, sizes)):
            A[i, max(b, 0):min(e, n)] = 1.0 / size
        mats.append(A)
    return mats


def as_network(model, input_shape=None):
    """A Network from a Network, or a PyTorch module (Network.from_torch)."""
    if isinstance(model, Network):
        return model
    torch = sys.modules.get("torch")  # a user's nn.Module subclass lives in the user's module
    if torch is not None and isinstance(model, torch.nn.Module):
        return Network.from_torch(model, input_shape)
    v.fail("model", "a fastmem.pathcond.Network or a PyTorch nn.Module", type(model).__name__)
