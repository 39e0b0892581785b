"""Which representation a run uses: primal (W), dual (scores Z and coefficients A), or
projected (V = W U^T).

The dual is exact when the optimizer's update is linear in the gradient (SGD with
momentum and decoupled weight decay): every iterate is then W_t = c_t W_0 - E^T A_t U
(A: N x M), and the run evolves the scores Z = E W U^T. With LayerNorm the scores are not
linear in W but the read-outs are: W_t = c_t W_0 - E^T A_t (A: N x d), and the run evolves
Q = E W. "auto" takes the dual where it is exact and the cost model below says it is
cheaper (counts of multiply-adds; b is the expected number of distinct tokens in a batch,
N for full-batch GD; R = M, or d with LayerNorm):

    primal, per step   4 b d (d + M) + d^2       (4 b d (1 + M) + d^2 for one-hot E)
    dual, per step     2 b (N R + M R) + N R      (N R -> R for a diagonal K_E; M R -> R for a
                                                  diagonal K_U or with LayerNorm)
    dual, once         N^2 d + M^2 d (+ N d^2 + N d M when W_0 != 0)

The projected representation (train_projected.hpp) trains V = W U^T (d x M) instead of W. It
is exact for updates that are an elementwise function of the gradient without state (Adam
with betas (0, 0), sign descent) without LayerNorm, and costs d^2 (2 M + 1) per step whatever
the batch. It keeps no W (records of W or sharpness, run.W and resuming need the primal), so
"auto" never picks it: ask for it (the scaling-law sweep does).
"""

import os
from typing import NamedTuple

import numpy as np

from .. import _validate as v
from ..specs import OptimizerKind, OptimizerSpec, TrainSpec
from .optim import describe, spec_of

REPRESENTATIONS = ("auto", "primal", "dual", "projected")  # the names; POLICIES (below) runs each


def _not_exact(opt):
    if opt.kind != OptimizerKind.SGD:  # momentum and decoupled weight decay are linear too
        return f"{describe(opt)} is not linear in the gradient"
    return None


def expected_distinct(p, b):
    """E[#distinct tokens] among b draws from p: sum_x 1 - (1 - p_x)^b."""
    return float(np.sum(-np.expm1(b * np.log1p(-np.minimum(p, 1.0 - 1e-16)))))


def rows_orthogonal(A, probes=4):
    """Whether A A^T is diagonal (to rounding), in O(rows x cols) time and memory, never
    forming A A^T: more non-zero rows than columns cannot be orthogonal; else, for random x,
    |A^T x|^2 = sum_i |a_i|^2 x_i^2 holds for every x only when the rows are orthogonal. An
    estimate for the cost model: the backends detect a diagonal Gram exactly when they build it."""
    rows, cols = A.shape
    if np.count_nonzero(np.any(A != 0, axis=1)) > cols:
        return False
    x = np.random.default_rng(0).standard_normal((rows, probes))
    lhs = np.square(A.T.astype(np.float64) @ x).sum(axis=0)
    rhs = np.einsum("ij,ij->i", A, A, dtype=np.float64) @ np.square(x)
    return bool(np.allclose(lhs, rhs, rtol=1e-9 if A.dtype == np.float64 else 1e-5, atol=0))


def _shape_facts(memory):
    """(K_E diagonal, K_U diagonal): from the one-hot columns and an O(M d) test, no Gram."""
    KE_diag = memory.onehot is not None and len(np.unique(memory.onehot[0])) == memory.N
    return KE_diag, memory.layernorm or rows_orthogonal(memory.U)


def dual_bytes(memory, opt, facts=None):
    """Memory the dual engine allocates: the Grams it keeps (none where diagonal), the state
    Z and A (and the momentum buffers mA, mZ), N x R each."""
    N, M, R = memory.N, memory.M, memory.d if memory.layernorm else memory.M
    KE_diag, KU_diag = facts or _shape_facts(memory)
    states = 4 if opt.momentum != 0.0 else 2
    return memory.dtype.itemsize * ((0 if KE_diag else N * N) + (0 if KU_diag else M * M) + states * N * R)


def _memory_budget():
    """Half the machine's physical memory (a dual that needs more is not chosen by "auto")."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def costs(memory, task, steps, batch_size, facts=None):
    """(primal, dual) multiply-add counts of a run, by the model above (from shapes and an
    O((N + M) d) orthogonality test: no Gram matrix is formed)."""
    N, M, d = memory.N, memory.M, memory.d
    b = N if batch_size is None else expected_distinct(task.p, batch_size)
    d_read = 1 if memory.onehot is not None else d
    primal = steps * (4 * b * d * (d_read + M) + d * d)
    KE_diag, KU_diag = facts or _shape_facts(memory)
    R = d if memory.layernorm else M
    per_row = (R if KE_diag else N * R) + (R if KU_diag else M * R)
    once = N * N * d + M * M * d + (N * d * d + N * d * M if np.any(memory.W) else 0)
    dual = once + steps * (2 * b * (per_row + (M * d if memory.layernorm else 0)) + N * R)
    return primal, dual


def _projected_not_exact(memory, opt):
    if memory.layernorm:
        return "LayerNorm needs the read-outs E W"
    if not (opt.kind == OptimizerKind.SIGN or opt.normalized):
        return f"{describe(opt)} keeps state or is linear (projected: Adam with betas (0, 0) or SignGD)"
    return None


def choose(memory, task, optimizer, steps, batch_size, requested):
    """(representation, reason) for a run of ``optimizer`` (fm.SGD, fm.Adam, fm.SignGD or its
    OptimizerSpec); asking for "dual" or "projected" where it is not exact raises."""
    optimizer = spec_of(optimizer)
    if requested not in REPRESENTATIONS:
        v.fail("representation", f"one of {REPRESENTATIONS}", repr(requested))
    if requested == "projected":
        why_not = _projected_not_exact(memory, optimizer)
        if why_not:
            v.fail("representation", "'primal' or 'auto' here: the projected representation is exact only for "
                   "Adam with betas (0, 0) or SignGD without LayerNorm", f"'projected' ({why_not})")
        return requested, "requested"
    why_not = _not_exact(optimizer)
    if requested == "dual" and why_not:
        v.fail("representation", "'primal' or 'auto' here: the dual representation is exact only for "
               "SGD-family optimizers", f"'dual' ({why_not})")
    if requested != "auto":
        return requested, "requested"
    if why_not:
        return "primal", f"dual not exact: {why_not}"
    facts = _shape_facts(memory)
    need, budget = dual_bytes(memory, optimizer, facts), _memory_budget()
    if need > budget:
        return "primal", f"the dual would allocate {need / 2**30:.3g} GiB (over half this machine's memory)"
    primal, dual = costs(memory, task, steps, batch_size, facts)
    if dual < primal:
        return "dual", f"cost model: dual {dual:.3g} < primal {primal:.3g} multiply-adds"
    return "primal", f"cost model: primal {primal:.3g} <= dual {dual:.3g} multiply-adds"


# --- the representations as policies: the buffers a run keeps and the backend call that trains them

class Call(NamedTuple):
    """What one fm.train call hands its representation: the problem's arrays (E, onehot_col,
    onehot_scale, U, p, y), the optimizer's spec, the run's TrainSpec and RecordSpec, given
    tokens, the user's Record and the TrainState to resume (or None)."""

    memory: object
    task: object
    problem: tuple
    opt: OptimizerSpec
    tp: TrainSpec
    rec: object
    tokens: object
    record: object
    resume: object

    def buffer(self, name, shape, needed=True):
        """The state array ``name`` to continue from (a copy), zeros for a new run, or None."""
        if not needed:
            return None
        dt = self.memory.dtype
        prev = self.resume.arrays if self.resume is not None else {}
        if name in prev:
            if prev[name].shape != shape or prev[name].dtype != dt:
                v.fail("resume", f"{name} of shape {shape} and dtype {dt}", f"{prev[name].dtype} {prev[name].shape}")
            return prev[name].copy()
        return np.zeros(shape, dtype=dt)

    @property
    def momentum(self):
        return self.opt.kind == OptimizerKind.SGD and self.opt.momentum != 0.0


class Outcome(NamedTuple):
    """How a representation's run ended: the backend's status, steps and records, and what the
    run's TrainState and Run keep beside the buffers (W's scale c, Adam's step count, the dual
    state (Z, A, c) that rebuilds W)."""

    status: int
    steps_done: int
    records: int
    c: float = 1.0
    opt_t: int = 0
    dual_state: tuple = None


class Primal:
    """W itself, with the optimizer's moments m, v: every optimizer, every record."""

    resumable = True

    def buffers(self, call):
        d, opt = call.memory.d, call.opt
        adam = opt.kind == OptimizerKind.ADAM
        W = call.buffer("W", (d, d)) if call.resume is not None else call.memory.W.copy()
        return {"W": W, "m": call.buffer("m", (d, d), adam or call.momentum), "v": call.buffer("v", (d, d), adam)}

    def run(self, be, call, a):
        E, oc, os_, U, p, y = call.problem
        status, done, n, opt_t = be.train(E, oc, os_, U, a["W"], p, y, call.task.cdf, call.tokens, call.opt, call.tp,
                                          call.rec, a["m"], a["v"], call.resume.opt_t if call.resume else 0)
        return Outcome(status, done, n, opt_t=opt_t)


class Dual:
    """The scores Z and coefficients A (N x M; the read-outs, N x d, with LayerNorm), and the
    momentum buffers mA, mZ: SGD-family optimizers (the module's docstring)."""

    resumable = True

    def buffers(self, call):
        shape = (call.memory.N, call.memory.d if call.memory.layernorm else call.memory.M)
        return {k: call.buffer(k, shape, k in ("Z", "A") or call.momentum) for k in ("Z", "A", "mA", "mZ")}

    def run(self, be, call, a):
        E, oc, os_, U, p, y = call.problem
        status, done, n, c = be.train_dual(E, oc, os_, U, call.memory.W, p, y, call.task.cdf, call.tokens, call.opt,
                                           call.tp, call.rec, a["Z"], a["A"], a["mA"], a["mZ"],
                                           call.resume.c if call.resume else 1.0, call.resume is None)
        return Outcome(status, done, n, c=c, dual_state=(a["Z"], a["A"], c))


class Projected:
    """V = W U^T (d x M): Adam with betas (0, 0) and SignGD without LayerNorm; keeps no W, so it
    records neither W nor sharpness and cannot be resumed."""

    resumable = False

    def buffers(self, call):
        if call.resume is not None:
            v.fail("resume", "None: a 'projected' run keeps no W to resume from", "a TrainState")
        bad = [m for m in ("W", "sharpness") if m in call.record.metrics]
        if bad:
            v.fail("record", "no 'W' or 'sharpness' metrics with representation 'projected' (it keeps W U^T)", bad)
        return {"V": np.ascontiguousarray(call.memory.W @ call.memory.U.T)}

    def run(self, be, call, a):
        E, _, _, U, p, y = call.problem
        status, done, n = be.train_projected(E, U, a["V"], p, y, call.task.cdf, call.tokens, call.opt, call.tp,
                                             call.rec)
        return Outcome(status, done, n)


# the representation of each name (choose() picks the name)
POLICIES = {"primal": Primal(), "dual": Dual(), "projected": Projected()}
