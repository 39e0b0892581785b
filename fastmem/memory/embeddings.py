"""Input and output embeddings (E: N x d, U: M x d).

Every constructor returns ``(E, U)`` as C-contiguous arrays of ``dtype``
(float32 by default, the dtype the compiled kernels are tuned for).
"""

import numpy as np

from .. import _validate as v


def _dims(N, M, d):
    return v.positive_int("N", N), v.positive_int("M", M), v.positive_int("d", d)


def gaussian(N, M, d, seed=0, dtype=np.float32):
    """Entries i.i.d. Normal(0, 1/d), the scaling-law papers' initialisation."""
    N, M, d = _dims(N, M, d)
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((N, d)) / np.sqrt(d)
    U = rng.standard_normal((M, d)) / np.sqrt(d)
    return E.astype(dtype), U.astype(dtype)


def sphere(N, M, d, seed=0, dtype=np.float32):
    """Gaussian rows normalised to the unit sphere."""
    E, U = gaussian(N, M, d, seed=seed, dtype=np.float64)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    return E.astype(dtype), U.astype(dtype)


def orthogonal(N, M, d=None, dtype=np.float32):
    """One-hot rows: E = I[:N], U = I[:M] with d >= max(N, M) (default d = max(N, M))."""
    N, M = v.positive_int("N", N), v.positive_int("M", M)
    d = max(N, M) if d is None else v.positive_int("d", d)
    if d < max(N, M):
        v.fail("d", f"d >= max(N, M) = {max(N, M)} for orthogonal embeddings", d)
    return np.eye(N, d, dtype=dtype), np.eye(M, d, dtype=dtype)


def correlated(N, M, d, cosine, seed=0, dtype=np.float32):
    """Unit input embeddings whose pairwise cosines are about ``cosine`` (in [0, 1)).

    e_x ∝ sqrt(cosine) c + sqrt(1 - cosine) g_x with c, g_x independent unit vectors;
    U is Gaussian on the sphere.
    """
    N, M, d = _dims(N, M, d)
    cosine = v.unit_interval("cosine", cosine)
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((N + 1, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    E = np.sqrt(cosine) * g[:1] + np.sqrt(1.0 - cosine) * g[1:]
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    U = rng.standard_normal((M, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    return E.astype(dtype), U.astype(dtype)


def two_token(alpha, dtype=np.float64):
    """The paper's two-token geometry: E = [[1, 0], [alpha, sqrt(1 - alpha^2)]], U = I (d = 2);
    ``alpha`` is the cosine of the two embeddings, in the paper's notation."""
    if not -1.0 <= alpha <= 1.0:
        v.fail("alpha", "a cosine in [-1, 1]", alpha)
    E = np.array([[1.0, 0.0], [alpha, np.sqrt(1.0 - alpha * alpha)]], dtype=dtype)
    return E, np.eye(2, dtype=dtype)
