"""The network PathCond works on: a graph of the layers of layers.py (dense and convolutional
layers with ReLU, positively homogeneous, between them, in a chain or with residual additions),
built from numpy arrays or read from a PyTorch module (torch_graph.py); its shapes, the layers
whose outputs are rescaled, and the solver's groups.

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
from .layers import (CHANNEL_WISE, PARAM_LAYERS, Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv2d, Dense,
                     Flatten, MaxPool2d, PathCondWarning)
from .torch_graph import traced_layers


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
        kinds = {}  # where the arrays live -> the first array there
        for la in self.layers:
            if isinstance(la, PARAM_LAYERS):
                arrays = [("weight", 4 if isinstance(la, Conv2d) else 2), ("bias", 1)]
            else:
                arrays = [("bias", 1), ("running_mean", 1)] if isinstance(la, BatchNorm) else []
            for what, ndim in arrays:
                a = getattr(la, what)
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
        layers, relus = traced_layers(model, 2 if input_shape is None else 1 + len(input_shape))
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
            while len(self.readers[node]) == 1 and isinstance(self.layers[self.readers[node][0]], CHANNEL_WISE):
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


def as_network(model, input_shape=None):
    """A Network from a Network, or a PyTorch module (Network.from_torch)."""
    if isinstance(model, Network):
        return model
    torch = sys.modules.get("torch")  # a user's nn.Module subclass lives in the user's module
    if torch is not None and isinstance(model, torch.nn.Module):
        return Network.from_torch(model, input_shape)
    v.fail("model", "a fastmem.pathcond.Network or a PyTorch nn.Module", type(model).__name__)
