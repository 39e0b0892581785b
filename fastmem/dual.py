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

import numpy as np

from . import _validate as v

REPRESENTATIONS = ("auto", "primal", "dual", "projected")


def _not_exact(memory, optimizer):
    if not optimizer.linear:
        return f"{type(optimizer).__name__} is not linear in the gradient"
    return None


def expected_distinct(p, b):
    """E[#distinct tokens] among b draws from p: sum_x 1 - (1 - p_x)^b."""
    return float(np.sum(-np.expm1(b * np.log1p(-np.minimum(p, 1.0 - 1e-16)))))


def costs(memory, task, steps, batch_size):
    """(primal, dual) multiply-add counts of a run, by the model above."""
    N, M, d = memory.N, memory.M, memory.d
    b = N if batch_size is None else expected_distinct(task.p, batch_size)
    d_read = 1 if memory.onehot is not None else d
    primal = steps * (4 * b * d * (d_read + M) + d * d)
    KE_diag = memory.onehot is not None and len(np.unique(memory.onehot[0])) == N
    R = d if memory.layernorm else M
    KU = memory.U @ memory.U.T
    KU_diag = memory.layernorm or np.count_nonzero(KU - np.diag(np.diag(KU))) == 0
    per_row = (R if KE_diag else N * R) + (R if KU_diag else M * R)
    once = N * N * d + M * M * d + (N * d * d + N * d * M if np.any(memory.W) else 0)
    dual = once + steps * (2 * b * (per_row + (M * d if memory.layernorm else 0)) + N * R)
    return primal, dual


def _projected_not_exact(memory, optimizer):
    o = optimizer._params()
    if memory.layernorm:
        return "LayerNorm needs the read-outs E W"
    if not (o["kind"] == 2 or (o["kind"] == 1 and o["beta1"] == 0.0 and o["beta2"] == 0.0)):
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
    primal, dual = costs(memory, task, steps, batch_size)
    if dual < primal:
        return "dual", f"cost model: dual {dual:.3g} < primal {primal:.3g} multiply-adds"
    return "primal", f"cost model: primal {primal:.3g} <= dual {dual:.3g} multiply-adds"
