"""The induction-head kernels on the compiled C++ backend (csrc/python/bind_transformer.cpp)."""

from .. import _core


def ihead_sample(tables, spec, z, outs):
    _core.ihead_sample(tables, spec, z, outs)


def ihead_rows_forward(weights, z, rows, Hr, A2):
    _core.ihead_rows_forward(weights, z, rows, Hr, A2)


def ihead_loss_grads(weights, z, rows, weight, grads):
    return _core.ihead_loss_grads(weights, z, rows, weight, grads)


def ihead_wo2_grads(Hr, A2, WU, y, Ws, weight, G, loss):
    _core.ihead_wo2_grads(Hr, A2, WU, y, Ws, weight, G, loss)
