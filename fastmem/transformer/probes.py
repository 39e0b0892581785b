"""The memory-recall probes of birth's ihead_basic_main.py (test_wo1, test_wk1, test_wk0), each
computed as the associative memory it is: fm.margins on the probe's E, U and W with y(x) = x
(docs/transformer.md (a)). The paper's W_O^2 is the authors' wo1, W_K^2 their wk1, W_K^1 wk0."""

import numpy as np

from ..memory import AssociativeMemory, Task, margins

PROBES = ("wo2", "wk2", "wk1")


def probe_memories(model, task=None):
    """{probe: AssociativeMemory} (rows e_x, u_k; scores e_x^T W u_k):

    - "wo2": E = wE W_V2^T (e_x = W_V2 w_E(x)), U = W_U, W = W_O2^T: V tokens recalled as themselves;
    - "wk2": E = wE[Q], U = wE[Q] (W_O1 W_V1)^T, W = W_K2 over the triggers Q (every token when the
      triggers are random): the induction head's key matching (needs 2 or more in Q);
    - "wk1": E = P[1:], U = P[:-1], W = W_K1: position t attends to t - 1.
    """
    w = model.weights
    Q = task.trigger_tokens if task is not None and task.trigger_tokens is not None else np.arange(model.V)
    mems = {"wo2": AssociativeMemory(w.wE @ w.WV2.T, w.WU, np.ascontiguousarray(w.WO2.T))}
    if len(Q) >= 2:
        eq = w.wE[Q]
        mems["wk2"] = AssociativeMemory(eq, eq @ (w.WO1 @ w.WV1).T, w.WK2.copy())
    if model.T >= 3:
        mems["wk1"] = AssociativeMemory(w.P[1:], w.P[:-1], w.WK1.copy())
    return mems


def probes(model, task=None, which=PROBES, backend=None):
    """{probe: margins (n,)} for the probes in ``which``: m(x) = target score - best other score;
    recall is the fraction of positive margins."""
    mems = probe_memories(model, task)
    out = {}
    for name in which:
        if name not in mems:
            continue
        mem = mems[name]
        n = mem.E.shape[0]
        out[name] = margins(mem, Task(np.full(n, 1.0 / n), np.arange(n), M=n), backend=backend)
    return out
