"""The float64 numpy reference: the oracle of every test and the last-resort backend.

Written for clarity, not speed: every kernel computes in float64 whatever the input
dtype and writes its outputs in the caller's dtype. Semantics (sampling stream,
duplicate aggregation, schedules, optimizers, recording, divergence) mirror the C++
core in csrc/include/fastmem exactly.

This module is the backend (its INFO) and the pieces its systems' references share: the
counter-based stream (rng.hpp), schedules and optimizers (optim.hpp) and the loop of drive()
(train.hpp). Each system's reference is in its own package (fastmem/<system>/_reference.py).
"""

import functools

import numpy as np

from .._interrupts import deferred_ctrl_c
from .._rng import splitmix64 as _splitmix64

INFO = {"precision": "float64 internally"}
# The precision the reference computes in: the tests set it to float32 for the naive
# same-precision run that float32 kernels are held to (tests/cases.py: naive_precision).
F = np.float64


# --- sampling: the counter-based stream of rng.hpp ---------------------------------

def uniform(seed, counters):
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    bits = _splitmix64(key ^ _splitmix64(np.asarray(counters, dtype=np.uint64)))
    return (bits >> np.uint64(11)).astype(F) * 2.0**-53


def draw(cdf, seed, start_step, steps, b):
    counters = np.arange(start_step * b, (start_step + steps) * b, dtype=np.uint64)
    x = np.searchsorted(cdf, uniform(seed, counters), side="right")
    return np.minimum(x, len(cdf) - 1).reshape(steps, b)


# --- optimizers and the driver (optim.hpp, train.hpp) ------------------------------

def lr_at(opt, t):
    if opt.schedule == 1:
        T = opt.schedule_steps
        frac = min(t / T, 1.0) if T > 0 else 0.0
        return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1.0 + np.cos(np.pi * frac))
    if opt.schedule == 2:
        return opt.lr * opt.gamma ** (t // opt.schedule_steps)
    return opt.lr


def optimizer_step(opt, lr, g, W, state):
    state["t"] += 1
    t, decay = state["t"], 1.0 - lr * opt.weight_decay
    if opt.kind == 0:
        if opt.momentum != 0.0:
            state["m"] = opt.momentum * state["m"] + g
            return decay * W - lr * state["m"]
        return decay * W - lr * g
    if opt.kind == 1:
        b1, b2 = opt.beta1, opt.beta2
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        mhat = state["m"] / (1 - b1**t)
        vhat = state["v"] / (1 - b2**t)
        return decay * W - lr * mhat / (np.sqrt(vhat) + opt.eps)
    return decay * W - lr * np.sign(g)


def held(a, dtype):
    """a (float64) as the caller's arrays hold it: rounded to float32 for float32 state, so that
    a run split in two (the state written out and read back between) is the same run."""
    return a if a is None or dtype == F else a.astype(dtype).astype(F)


INTERRUPTED = 2  # drive()'s status when Ctrl-C came during an interruptible trainer
_ctrl_c = [[False]]  # the flag drive() reads between steps: that of the interruptible trainer running


def interruptible(progress):
    """Decorates a reference trainer (a function around drive()): Ctrl-C while it runs ends
    the loop between two steps (status INTERRUPTED), not in the middle of one, the trainer
    writes its arrays back as at its end, and then KeyboardInterrupt is raised carrying
    ``fastmem_progress = progress(result)`` (steps done, records written), as the compiled
    backends do (see fastmem._interrupts for where Ctrl-C stays what it was)."""
    def wrap(f):
        @functools.wraps(f)
        def run(*args):
            with deferred_ctrl_c() as came:
                outer, _ctrl_c[0] = _ctrl_c[0], came
                try:
                    result = f(*args)
                finally:
                    _ctrl_c[0] = outer
            if came[0]:
                exc = KeyboardInterrupt()
                exc.fastmem_progress = progress(result)
                raise exc
            return result

        return run

    return wrap


def drive(steps, at, record, step, batch=None):
    """The loop of drive() in train.hpp: record at the steps ``at`` (ascending), then step t;
    record(r) returns the loss it saw, step(t) False where the loss turned non-finite. With
    ``batch`` (the memory's trainers), the driver draws step t's batch, batch(t) -> (tokens,
    weights, lr), and hands it on: step(t, tokens, weights, lr). Ctrl-C inside an
    interruptible trainer ends it between two steps (status INTERRUPTED)."""
    status, r, done = 0, 0, 0
    for t in range(steps + 1):
        while r < len(at) and at[r] == t:
            loss = record(r)
            if loss is not None and not np.isfinite(loss):
                status = 1
            r += 1
        done = t
        if t == steps or status != 0:
            break
        if _ctrl_c[0][0]:
            status = INTERRUPTED
            break
        if not (step(t) if batch is None else step(t, *batch(t))):
            status = 1
            break
    return status, done, r
