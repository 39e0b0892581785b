"""The associative memory: embeddings E (N x d), U (M x d) and the memory W (d x d).

Scores of token x are z(x) = e_x^T W U^T (row convention, see docs/model.md).
"""

import numpy as np

from .. import _validate as v


class AssociativeMemory:
    """E, U and W of one dtype (float32 or float64).

    The memory owns read-only copies of E and U (and a copy of W): what it knows about them
    (finite, E one-hot) stays true whatever the caller later does to the arrays it passed.

    Parameters
    ----------
    E : array (N, d)
    U : array (M, d)
    W : array (d, d), optional
        Defaults to zeros.
    layernorm : bool
        Normalise the read-out h = e_x^T W to h / sqrt(|h|^2 + 1e-6) before the scores.
    """

    def __init__(self, E, U, W=None, layernorm=False, _owned=None):
        if _owned is None:
            E = _read_only_copy(v.float_matrix("E", E))
            U = _read_only_copy(v.float_matrix("U", U, shape=(None, E.shape[1]), dtype=E.dtype))
            if U.shape[0] < 2:
                v.fail("U", "at least 2 rows (M >= 2 output tokens)", f"shape {U.shape}")
            onehot = _detect_onehot(E)
        else:
            onehot = _owned
        self._E, self._U = E, U
        d = E.shape[1]
        if W is None:
            self.W = np.zeros((d, d), dtype=self.E.dtype)
        else:
            self.W = v.float_matrix("W", W, shape=(d, d), dtype=self.E.dtype).copy()
        self.layernorm = bool(layernorm)
        self._onehot = onehot

    @property
    def E(self):
        """(N, d), read-only. Assigning another E copies and checks it, and finds again whether it
        is one-hot: what the backends are told about E follows E."""
        return self._E

    @E.setter
    def E(self, E):
        E = _read_only_copy(v.float_matrix("E", E, shape=(None, self.d), dtype=self.dtype))
        self._E, self._onehot = E, _detect_onehot(E)

    @property
    def U(self):
        """(M, d), read-only; assigning another U copies and checks it."""
        return self._U

    @U.setter
    def U(self, U):
        U = _read_only_copy(v.float_matrix("U", U, shape=(None, self.d), dtype=self.dtype))
        if U.shape[0] < 2:
            v.fail("U", "at least 2 rows (M >= 2 output tokens)", f"shape {U.shape}")
        self._U = U

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
        return AssociativeMemory(self.E, self.U, W=W, layernorm=self.layernorm, _owned=self._onehot)

    def __repr__(self):
        kind = ", one-hot E" if self._onehot is not None else ""
        return f"AssociativeMemory(N={self.N}, M={self.M}, d={self.d}, dtype={self.dtype}{kind}, layernorm={self.layernorm})"


def _read_only_copy(a):
    """A read-only view of a read-only copy: the view's flag cannot be set back to writeable."""
    a = a.copy()
    a.flags.writeable = False
    return a.view()


def _detect_onehot(E):
    nz = E != 0
    if not (nz.sum(axis=1) == 1).all():
        return None
    cols = nz.argmax(axis=1).astype(np.int64)
    return cols, np.ascontiguousarray(E[np.arange(E.shape[0]), cols])
