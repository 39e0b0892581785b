"""What users measure per fact n (docs/scansnap.md): the attention c_n in the long-sequence
limit, c_{l|n} = P(l|n) e^{Z[m, l]} / sum_l' P(l'|n) e^{Z[m, l']}; its entropy over n's distinct
tokens (renormalised over them); the attention mass on common tokens; the argmax token."""

import numpy as np

from .. import _validate as v


def attention_metrics(facts, Zq):
    """Zq (..., F, M): the query rows of Z for each fact (Z[facts.query]). Returns
    (attention (..., F, M), entropy (..., F), common_mass (..., F), argmax (..., F) int64)."""
    Zq = np.asarray(Zq, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverged run's records: NaN
        return _metrics(facts, Zq)


def _metrics(facts, Zq):
    P = facts.context
    support = P > 0
    z = np.where(support, Zq, -np.inf)
    w = np.where(support, P * np.exp(z - z.max(-1, keepdims=True)), 0.0)
    c = w / w.sum(-1, keepdims=True)
    d = np.where(facts.distinct, c, 0.0)
    pd = d / np.maximum(d.sum(-1, keepdims=True), np.finfo(float).tiny)
    entropy = -np.where(pd > 0, pd * np.log(np.where(pd > 0, pd, 1.0)), 0.0).sum(-1)
    common_mass = np.where(facts.common, c, 0.0).sum(-1)
    return c, entropy, common_mass, c.argmax(-1)


def attention(facts, Z):
    """The facts' attention c_n (F, M) under Z (M x M): see attention_metrics."""
    Z = v.float_matrix("Z", Z, shape=(facts.M, facts.M))
    return attention_metrics(facts, Z[facts.query])[0]
