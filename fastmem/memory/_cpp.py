"""The associative memory's kernels on the compiled C++ backend (fastmem._core, csrc/python/bind_memory.cpp):
thin adapters with the registry's signatures."""

from .. import _core


def softmax_xent_grad(q, u, y, w, h, lse, zy, zother, chunk):
    _core.softmax_xent_grad(q, u, y, w, h, lse, zy, zother, chunk)


def sgd_rank_update(W, Eb, H, alpha):
    _core.sgd_rank_update(W, Eb, H, alpha)


def sample_tokens(cdf, seed, start_step, out):
    _core.sample_tokens(cdf, seed, start_step, out)


def normal_fill(seed, scale, out):
    _core.normal_fill(seed, scale, out)


def population_metrics(E, onehot_col, onehot_scale, U, W, p, y, layernorm, chunk, margins, grad):
    return _core.population_metrics(E, onehot_col, onehot_scale, U, W, p, y, layernorm, chunk, margins, grad)


def sharpness(E, onehot_col, onehot_scale, U, W, p, y, chunk, iters, tol, seed):
    return _core.sharpness(E, onehot_col, onehot_scale, U, W, p, y, chunk, iters, tol, seed)


def train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0):
    return _core.train(E, onehot_col, onehot_scale, U, W, p, y, cdf, tokens, opt, tp, rec, m, v, t0)


def train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c, fresh):
    return _core.train_dual(E, onehot_col, onehot_scale, U, W0, p, y, cdf, tokens, opt, tp, rec, Z, A, mA, mZ, c,
                            fresh)


def sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out):
    return _core.sgd_step(W, E, onehot_col, onehot_scale, U, x, y, lr, layernorm, out)


def dual_rebuild_W(E, onehot_col, onehot_scale, U, W0, A, c, W_out):
    _core.dual_rebuild_W(E, onehot_col, onehot_scale, U, W0, A, c, W_out)


def train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec):
    return _core.train_model(kind, E, U, W, p, y, cdf, tokens, opt, tp, rec)


def train_many(E, U, W, p, y, lr, steps, loss, accuracy, status):
    _core.train_many(E, U, W, p, y, lr, steps, loss, accuracy, status)


def train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec):
    return _core.train_projected(E, U, V, p, y, cdf, tokens, opt, tp, rec)
