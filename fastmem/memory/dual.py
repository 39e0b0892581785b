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

import numpy as np

from .. import _validate as v
from ..specs import OptimizerKind

REPRESENTATIONS = ("auto", "primal", "dual", "projected")


def _not_exact(memory, optimizer):
    if not optimizer.linear:
        return f"{type(optimizer).__name__} is not linear in the gradient"
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


def dual_bytes(memory, optimizer, facts=None):
    """Memory the dual engine allocates: the Grams it keeps (none where diagonal), the state
    Z and A (and the momentum buffers mA, mZ), N x R each."""
    N, M, R = memory.N, memory.M, memory.d if memory.layernorm else memory.M
    KE_diag, KU_diag = facts or _shape_facts(memory)
    states = 4 if optimizer._params().momentum != 0.0 else 2
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


def _projected_not_exact(memory, optimizer):
    o = optimizer._params()
    if memory.layernorm:
        return "LayerNorm needs the read-outs E W"
    if not (o.kind == OptimizerKind.SIGN or o.normalized):
        return f"{optimizer!r} keeps state or is linear (projected: Adam with betas (0, 0) or SignGD)"
    return None


def choose(memory, task, optimizer, steps, batch_size, requested):
    """(representation, reason) for a run; asking for "dual" or "projected" where it is not exact raises."""
    if requested not in REPRESENTATIONS:
        v.fail("representation", f"one of {REPRESENTATIONS}", repr(requested))
    if requested == "projected":
        why_not = _projected_not_exact(memory, optimizer)
        if why_not:
            v.fail("representation", "'primal' or 'auto' here: the projected representation is exact only for "
                   "Adam with betas (0, 0) or SignGD without LayerNorm", f"'projected' ({why_not})")
        return requested, "requested"
    why_not = _not_exact(memory, optimizer)
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
