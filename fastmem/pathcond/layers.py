"""The layers of a network PathCond works on, as fastmem describes them: the arrays are the
caller's (numpy arrays or PyTorch tensors), which a rescaling updates in place. Every layer reads
``inputs``: the indices of earlier layers in ``Network.layers`` (-1: the network's input); None
reads the layer before it (the network's input for the first)."""

from dataclasses import dataclass

import numpy as np


class PathCondWarning(UserWarning):
    """A layer where PathCond's rescaling or its kernel is not exact (named in the message)."""


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
CHANNEL_WISE = (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm, Identity, Flatten)  # carry a channel's scale


def pair(x):
    return (int(x), int(x)) if np.ndim(x) == 0 else tuple(int(a) for a in x)


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
