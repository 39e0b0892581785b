"""Correlation Mode Decomposition of training trajectories (Brokman, Betser, Turjeman, Berkov,
Cohen, Gilboa, *Enhancing Neural Training via a Correlated Dynamics Model*, ICLR 2024).

Parameters move in a few synchronised groups ("modes"): theta_i(t) ~ a_i theta_ref(i)(t) + b_i.
``fit`` is the post-hoc algorithm on a T x P trajectory (any array, not only fastmem's);
``OnlineCMD`` updates (a, b) as steps arrive without keeping the trajectory; ``EmbeddedCMD``
also freezes the parameters whose (a, b) settled, and plugs into ``fm.train`` as a callback.
The passes over all P parameters are compiled kernels (kernels/cmd.hpp).
"""

from dataclasses import dataclass

import numpy as np

from .. import _validate as v
from ..backends import get


@dataclass
class CMDResult:
    """A fitted decomposition.

    references : (M,) int, the parameter index of each mode's reference, modes ordered by
        the size of their cluster in the sample
    assignment : (P,) int, the mode of every parameter
    a, b : (P,) float64, theta_i(t) ~ a_i r_{assignment_i}(t) + b_i
    ref_series : (T, M) float64, the references' values over the fitted steps
    sample, sample_modes : the sampled parameter indices and their clusters
    """

    references: np.ndarray
    assignment: np.ndarray
    a: np.ndarray
    b: np.ndarray
    ref_series: np.ndarray
    sample: np.ndarray
    sample_modes: np.ndarray

    @property
    def n_modes(self):
        return len(self.references)

    def reconstruct(self, ref_series=None):
        """theta_hat (T, P) = a * r_mode(t) + b, from the stored reference series or ``ref_series`` (T, M)."""
        r = self.ref_series if ref_series is None else np.asarray(ref_series, dtype=np.float64)
        return r[:, self.assignment] * self.a + self.b

    def relative_error(self, trajectory):
        """||theta_hat - theta|| / ||theta - mean_t theta|| over the fitted trajectory (T, P)."""
        X = np.asarray(trajectory, dtype=np.float64)
        return float(np.linalg.norm(self.reconstruct() - X) / np.linalg.norm(X - X.mean(axis=0)))


def sample_indices(P, n_samples, seed=0, groups=None, floor=10):
    """K parameter indices without replacement; with ``groups`` (sizes of the tensors, summing
    to P) each tensor gets at least ``floor`` (or all it has) and the rest in proportion to size."""
    rng = np.random.default_rng(seed)
    K = min(int(n_samples), P)
    if groups is None:
        return np.sort(rng.choice(P, size=K, replace=False))
    sizes = np.asarray(groups, dtype=np.int64)
    if sizes.sum() != P or (sizes <= 0).any():
        v.fail("groups", f"positive tensor sizes summing to P = {P}", list(sizes))
    base = np.minimum(sizes, floor)
    extra = np.floor((K - base.sum()) * sizes / P).astype(np.int64) if K > base.sum() else 0
    counts = np.minimum(sizes, base + extra)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    picks = [s + rng.choice(n, size=k, replace=False) for s, n, k in zip(starts, sizes, counts)]
    return np.sort(np.concatenate(picks))


def _cluster(series, n_modes):
    """Complete-linkage clusters of the rows of |corrcoef| (Euclidean distances between rows),
    cut into at most ``n_modes``; labels 0.. ordered by cluster size (largest first)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    with np.errstate(divide="ignore", invalid="ignore"):
        C = np.atleast_2d(np.abs(np.corrcoef(series, rowvar=False)))  # one series: corrcoef gives a 0-d array
    C = np.nan_to_num(C, nan=0.0)  # constant series
    if C.shape[0] == 1:
        return C, np.zeros(1, dtype=np.int64)
    labels = fcluster(linkage(C, method="complete", metric="euclidean"), n_modes, criterion="maxclust") - 1
    sizes = np.bincount(labels)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return C, rank[labels]


def _check_trajectory(trajectory):
    X = np.asarray(trajectory)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        v.fail("trajectory", "a (T, P) array with T >= 2 steps and P >= 1 parameters", f"shape {X.shape}")
    if X.dtype not in v.FLOAT_DTYPES:
        X = X.astype(np.float64)
    if not np.isfinite(X).all():
        v.fail("trajectory", "finite values", "NaN or Inf")
    return np.ascontiguousarray(X)


def fit(trajectory, n_modes, n_samples=1000, seed=0, groups=None, backend=None):
    """Post-hoc CMD of a trajectory (T, P): sample, cluster |corr|, pick references, assign
    every parameter to its most correlated reference, fit (a, b) by least squares."""
    X = _check_trajectory(trajectory)
    n_modes = v.positive_int("n_modes", n_modes)
    sample = sample_indices(X.shape[1], v.positive_int("n_samples", n_samples), seed, groups)
    # correlations square products of the values (r^2 = cov^2 / (var var)): past |theta| ~ 1e77
    # they overflow, below ~1e-77 they underflow. Such a trajectory is brought to ~1 by a power
    # of two (exact; a is scale-free, b scales back); others are used as they are (no copy)
    amax = max(float(X.max()), -float(X.min()))  # no |X| temporary: X may be gigabytes
    shift = int(np.ceil(np.log2(amax))) if amax > 0 and not 2.0**-100 <= amax <= 2.0**100 else 0
    shift = max(-100, min(100, shift)) if X.dtype == np.float32 else shift  # 2**±100 is exact in float32
    scale = 2.0 ** shift
    Xs = X * X.dtype.type(2.0 ** -shift) if shift else X
    C, labels = _cluster(Xs[:, sample].astype(np.float64), n_modes)
    refs = []
    for m in range(labels.max() + 1):
        members = np.flatnonzero(labels == m)
        inner = C[np.ix_(members, members)]
        score = (inner.sum(axis=1) - np.diag(inner)) / max(len(members) - 1, 1)
        refs.append(sample[members[np.argmax(score)]])
    references = np.array(refs, dtype=np.int64)
    assignment, a, b = _assign_fit(np.ascontiguousarray(Xs), np.ascontiguousarray(Xs[:, references], dtype=np.float64),
                                   backend)
    ref_series = np.ascontiguousarray(X[:, references], dtype=np.float64)
    return CMDResult(references, assignment, a, b * scale, ref_series, sample, labels)


def _assign_fit(X, ref_series, backend):
    P = X.shape[1]
    assignment = np.empty(P, dtype=np.int64)
    a, b = np.empty(P), np.empty(P)
    get(backend).cmd_assign_fit(X, ref_series, assignment, a, b, None)
    return assignment, a, b


class OnlineCMD:
    """CMD that keeps no trajectory: post-hoc CMD on a warm-up of ``warmup`` steps fixes the
    modes, references and assignment; every later step updates (a, b) by recursive least
    squares, equal to batch least squares over all steps seen. Memory O(P + M).

    ``update(theta)`` takes the flat parameter vector (P,) of one step.
    """

    def __init__(self, n_modes, warmup, n_samples=1000, seed=0, groups=None, backend=None):
        self.n_modes = v.positive_int("n_modes", n_modes)
        self.warmup = v.positive_int("warmup", warmup)
        if self.warmup < 2:
            v.fail("warmup", "at least 2 steps", warmup)
        self._fit_args = dict(n_samples=n_samples, seed=seed, groups=groups, backend=backend)
        self._backend = backend
        self._buffer = []
        self.result = None
        self.n = 0

    def update(self, theta):
        theta = np.asarray(theta).ravel()
        if self.result is None:
            self._buffer.append(theta.copy())
            self.n += 1
            if self.n == self.warmup:
                self._start(np.stack(self._buffer))
                self._buffer = None
            return
        if theta.dtype not in v.FLOAT_DTYPES:
            theta = theta.astype(np.float64)
        r = np.ascontiguousarray(theta[self.result.references], dtype=np.float64)
        get(self._backend).cmd_online_update(np.ascontiguousarray(theta), r, self.result.assignment, self.n,
                                             self._r_mean, self._r_m2, self._theta_mean, self._co)
        self.n += 1

    def _start(self, X):
        self.result = fit(X, self.n_modes, **self._fit_args)
        res = self.result
        self._theta_mean = X.mean(axis=0, dtype=np.float64)
        self._r_mean = res.ref_series.mean(axis=0)
        rc = res.ref_series - self._r_mean
        self._r_m2 = (rc * rc).sum(axis=0)
        self._co = np.zeros_like(self._theta_mean)
        for x, r in zip(X, rc):  # a row at a time: no (F, P) float64 temporary
            self._co += (x - self._theta_mean) * r[res.assignment]

    @property
    def ab(self):
        """(a, b) of every parameter over all steps seen so far."""
        if self.result is None:
            raise RuntimeError("OnlineCMD: no fit before the warm-up is complete")
        m = self.result.assignment
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(self._r_m2[m] > 0, self._co / self._r_m2[m], 0.0)
        return a, self._theta_mean - a * self._r_mean[m]


class EmbeddedCMD(OnlineCMD):
    """Online CMD that, every ``every`` steps after the warm-up, freezes ("embeds") a further
    ``fraction`` of the non-reference parameters, those whose (a, b) changed least since the
    last check; an embedded parameter follows theta_i(t) = a_i r(t) + b_i with its (a, b)
    fixed. References are never embedded.

    As a callback of ``fm.train(..., callback=cmd, callback_every=1)`` it reads the memory W
    of each step and writes the embedded entries back.
    """

    def __init__(self, n_modes, warmup, every, fraction=0.1, **kw):
        super().__init__(n_modes, warmup, **kw)
        self.every = v.positive_int("every", every)
        self.fraction = v.unit_interval("fraction", fraction, closed_right=True)
        self.embedded = None
        self._frozen_a = self._frozen_b = self._prev = None

    def update(self, theta):
        super().update(theta)
        if self.result is None:
            return
        if self.embedded is None:
            P = len(self._theta_mean)
            self.embedded = np.zeros(P, dtype=bool)
            self._frozen_a, self._frozen_b = np.zeros(P), np.zeros(P)
            self._prev = np.stack(self.ab)
            self._since = 0
            return
        self._since += 1
        if self._since == self.every:
            self._since = 0
            self._embed_more()

    def _embed_more(self):
        a, b = self.ab
        change = np.hypot(a - self._prev[0], b - self._prev[1])
        self._prev = np.stack([a, b])
        candidates = np.ones(len(a), dtype=bool)
        candidates[self.result.references] = False
        candidates &= ~self.embedded
        k = min(int(round(self.fraction * len(a))), int(candidates.sum()))
        if k == 0:
            return
        idx = np.flatnonzero(candidates)
        new = idx[np.argsort(change[idx], kind="stable")[:k]]
        self.embedded[new] = True
        self._frozen_a[new], self._frozen_b[new] = a[new], b[new]

    def embed(self, theta):
        """theta (P,) with its embedded entries replaced by a_i r(t) + b_i, in place."""
        if self.embedded is not None and self.embedded.any():
            flat = theta.reshape(-1)
            r = flat[self.result.references].astype(np.float64)[self.result.assignment[self.embedded]]
            flat[self.embedded] = self._frozen_a[self.embedded] * r + self._frozen_b[self.embedded]
        return theta

    def __call__(self, step, state):
        """The fm.train callback: learn from W, then impose the embedded entries on it."""
        W = state.W
        self.update(W.ravel())
        self.embed(W)
