"""The associative memory: embeddings E (N x d), U (M x d) and the memory W (d x d).

Scores of token x are z(x) = e_x^T W U^T (row convention, see MODEL.md).
"""

import numpy as np

from . import _validate as v


class AssociativeMemory:
    """E, U and W of one dtype (float32 or float64).

    Parameters
    ----------
    E : array (N, d)
    U : array (M, d)
    W : array (d, d), optional
        Defaults to zeros.
    layernorm : bool
        Normalise the read-out h = e_x^T W to h / sqrt(|h|^2 + 1e-6) before the scores.
    """

    def __init__(self, E, U, W=None, layernorm=False):
        self.E = v.float_matrix("E", E)
        d = self.E.shape[1]
        self.U = v.float_matrix("U", U, shape=(None, d), dtype=self.E.dtype)
        if self.U.shape[0] < 2:
            v.fail("U", "at least 2 rows (M >= 2 output tokens)", f"shape {self.U.shape}")
        if W is None:
            self.W = np.zeros((d, d), dtype=self.E.dtype)
        else:
            self.W = v.float_matrix("W", W, shape=(d, d), dtype=self.E.dtype).copy()
        self.layernorm = bool(layernorm)
        self._onehot = _detect_onehot(self.E)

    @property
    def N(self):
        return self.E.shape[0]

    @property
    def M(self):
        return self.U.shape[0]

    @property
    def d(self):
        return self.E.shape[1]

    @property
    def dtype(self):
        return self.E.dtype

    @property
    def onehot(self):
        """``(cols, scales)`` when every row of E has one non-zero entry (e_x = s_x unit(c_x)), else None."""
        return self._onehot

    def with_W(self, W):
        """The same embeddings with another memory W (d, d)."""
        return AssociativeMemory(self.E, self.U, W=W, layernorm=self.layernorm)

    def __repr__(self):
        kind = ", one-hot E" if self._onehot is not None else ""
        return f"AssociativeMemory(N={self.N}, M={self.M}, d={self.d}, dtype={self.dtype}{kind}, layernorm={self.layernorm})"


def _detect_onehot(E):
    nz = E != 0
    if not (nz.sum(axis=1) == 1).all():
        return None
    cols = nz.argmax(axis=1).astype(np.int64)
    return cols, np.ascontiguousarray(E[np.arange(E.shape[0]), cols])
