"""Reading a PyTorch module as fastmem's layers: its torch.fx graph, node by node (PyTorch is
imported on use)."""

import numpy as np

from .. import _validate as v
from .layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv2d, Dense, Flatten, Identity, MaxPool2d,
                     pair)


def layer_of(child, full):
    """The layer of one PyTorch leaf module (None for a ReLU or nn.Identity), or a named error."""
    import torch.nn as nn

    if isinstance(child, nn.Linear):
        return Dense(child.weight, child.bias, name=full)
    if isinstance(child, nn.Conv2d):
        if child.groups != 1 or pair(child.dilation) != (1, 1) or not isinstance(child.padding, tuple) \
                or child.padding_mode != "zeros":
            v.fail(f"model.{full}", "a Conv2d with groups=1, dilation 1 and numeric zero padding", repr(child))
        return Conv2d(child.weight, child.bias, pair(child.stride), pair(child.padding), name=full)
    if isinstance(child, (nn.ReLU, nn.Identity)):
        return None
    if isinstance(child, (nn.Dropout, nn.Dropout2d)):
        return Identity(name=full)
    if isinstance(child, nn.Flatten):
        if child.start_dim != 1 or child.end_dim != -1:
            v.fail(f"model.{full}", "Flatten(start_dim=1, end_dim=-1)", repr(child))
        return Flatten(name=full)
    if isinstance(child, nn.MaxPool2d):
        if pair(child.dilation) != (1, 1) or child.ceil_mode or child.return_indices:
            v.fail(f"model.{full}", "a MaxPool2d with dilation 1 and ceil_mode False", repr(child))
        return MaxPool2d(pair(child.kernel_size), pair(child.stride or child.kernel_size), pair(child.padding),
                         name=full)
    if isinstance(child, nn.AvgPool2d):
        if child.ceil_mode or child.divisor_override is not None:
            v.fail(f"model.{full}", "an AvgPool2d with ceil_mode False and no divisor_override", repr(child))
        return AvgPool2d(pair(child.kernel_size), pair(child.stride or child.kernel_size), pair(child.padding),
                         bool(child.count_include_pad), name=full)
    if isinstance(child, nn.AdaptiveAvgPool2d):
        size = child.output_size
        return AdaptiveAvgPool2d((size, size) if size is None or np.ndim(size) == 0 else tuple(size), name=full)
    if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return BatchNorm(child.bias, child.running_mean, child.training or child.running_mean is None, name=full)
    v.fail(f"model.{full}", "Linear, Conv2d, ReLU, Flatten, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout or "
           "BatchNorm layers (and residual additions between them)", type(child).__name__)


def traced_layers(model, rank=2):
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
        la = layer_of(model, type(model).__name__)
        return ([] if la is None else [la]), int(isinstance(model, nn.ReLU))

    class Input(fx.Proxy):  # the traced input, whose rank is known
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
            la = layer_of(module, node.target)
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
            where[node] = layer(layer_of(pools[node.target](*node.args[1:], **node.kwargs), node.name), inputs)
        elif _flattens(node, shapes):
            where[node] = layer(Flatten(name=node.name), inputs)
        elif (keepdim := _spatial_mean(node)) is not None:  # global average pooling, x.mean((2, 3))
            where[node] = layer(AdaptiveAvgPool2d((1, 1), name=node.name), inputs)
            if not keepdim:
                where[node] = layer(Flatten(name=f"{node.name}.flatten"), [node])
        elif node.op == "call_function" and node.target is F.dropout:
            where[node] = layer(Identity(name=node.name), inputs)
        else:
            v.fail(f"model.{node.name}", "Linear, Conv2d, ReLU (module or F.relu / torch.relu), flatten / view / "
                   "reshape to (batch, -1), max or average pooling (x.mean((2, 3)) too), Dropout, BatchNorm or a "
                   "residual addition", what)
    return layers, relus


def _spatial_mean(node):
    """x.mean((2, 3)) / torch.mean(x, dim=(-2, -1)) of a (batch, C, H, W) value: its keepdim, or
    None for any other call."""
    import torch

    if not ((node.op == "call_method" and node.target == "mean") or (node.op == "call_function"
                                                                   and node.target is torch.mean)):
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3] and set(node.kwargs) <= {"dim",
                                                                                                  "keepdim"}:
        return bool(keep)
    return None


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
