"""The associative memory's kernels on the CUDA backend (fastmem.backends.cuda): adapters with the
registry's signatures over fastmem._cuda (csrc/cuda).

sgd_step returns its loss as a float: the one value that crosses to the host. Large products go to
cuBLAS through CuPy's matmul (batched for many runs); the fused softmax, the update, the sampler and
the one-block-per-run drivers are fastmem's kernels.
"""

import cupy as cp

from .. import _cuda
from ..backends.cuda import ptr as _ptr
from ..backends.cuda import stream as _stream
from . import _arraycode as arraycode


def softmax_xent_grad(q, u, y, w, h, lse, zy, zother, chunk):
    # chunk is the CPU's cache blocking; the device kernel streams fixed 64-token chunks
    b, d = q.shape
    _cuda.softmax_xent_grad(q.dtype.name, _ptr(q), _ptr(u), _ptr(y), _ptr(w), _ptr(h), _ptr(lse), _ptr(zy),
                            _ptr(zother), b, u.shape[0], d, _stream())


def sgd_rank_update(W, Eb, H, alpha):
    _cuda.sgd_rank_update(W.dtype.name, _ptr(W), _ptr(Eb), _ptr(H), float(alpha), Eb.shape[0], W.shape[0],
                          _stream())


def sample_tokens(cdf, seed, start_step, out):
    _cuda.sample_tokens(_ptr(cdf), cdf.shape[0], seed, start_step, _ptr(out), out.shape[0], out.shape[1], _stream())


def sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out):
    return arraycode.sgd_step(cp, softmax_xent_grad, sgd_rank_update, W, E, U, x, y, lr, layernorm, out)


def _dual_kernel(p, y, lr, steps, loss, accuracy, status, Z, A, KE, KU):
    R, N, M = Z.shape
    return _cuda.train_many_dual(Z.dtype.name, _ptr(p), _ptr(y), _ptr(lr), R, N, M, steps, _ptr(loss),
                                 _ptr(accuracy), _ptr(status), _ptr(Z), _ptr(A), _ptr(KE), _ptr(KU), _stream())


def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    R, N, d = E.shape
    M = U.shape[1]
    # one block per run: dual where it is cheaper per step (train_many.cu), else primal; runs
    # too large for a block's shared memory as batched cuBLAS products
    if N * M * (N + M) < 2 * N * d * (d + M) and arraycode.train_many_dual(
            cp, _dual_kernel, E, U, W, p, y, lr, steps, loss, accuracy, status):
        return
    if _cuda.train_many(W.dtype.name, _ptr(E), _ptr(U), _ptr(W), _ptr(p), _ptr(y), _ptr(lr), R, N, M, d, steps,
                        _ptr(loss), _ptr(accuracy), _ptr(status), _stream()):
        return
    arraycode.train_many_batched(cp, E, U, W, p, y, lr, steps, loss, accuracy, status)
