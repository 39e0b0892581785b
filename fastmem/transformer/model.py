"""The two-layer attention-only transformer of the induction-head study (birth's
ihead_basic_model.py with its defaults; docs/transformer.md): frozen random token and position
embeddings, one head per layer, W_Q = identity, no feed-forward layer, no LayerNorm."""

from typing import NamedTuple

import numpy as np

from .. import _validate as v
from ..backends import get
from .data import Batch

MATRICES = ("wE", "P", "WK1", "WV1", "WO1", "WK2", "WV2", "WO2", "WU")
TRAINABLE = ("wE", "WK1", "WK2", "WO2", "WU")
# the trainable sets by name: "wo2" the W_O^2-only study, "all" the paper's "train all" with the
# embeddings frozen (birth's README example); add "wE" and "WU" by naming them
TRAIN_SETS = {"wo2": ("WO2",), "all": ("WK1", "WK2", "WO2")}
LOSSES = ("head", "all")


class Weights(NamedTuple):
    """The model's matrices in torch's weight layout (k = W_K h): wE (V, d), P (T, d), the six
    attention matrices (d, d), WU (V, d)."""

    wE: np.ndarray
    P: np.ndarray
    WK1: np.ndarray
    WV1: np.ndarray
    WO1: np.ndarray
    WK2: np.ndarray
    WV2: np.ndarray
    WO2: np.ndarray
    WU: np.ndarray


class Grads(NamedTuple):
    """Gradients the kernels write (None: not asked for), shapes as Weights'."""

    wE: object = None
    WK1: object = None
    WK2: object = None
    WO2: object = None
    WU: object = None


class Rows(NamedTuple):
    """The positions a loss reads, per sequence: sequence b's are idx[ptr[b]:ptr[b+1]]."""

    ptr: np.ndarray
    idx: np.ndarray


def rows_of(outs, loss="head"):
    """Rows of the head loss (outs >= 2: a trigger's 2nd, 3rd, ... occurrence, whose target is
    in context), of every position ("all"), or of the non-trigger positions ("other")."""
    mask = {"head": outs >= 2, "all": np.ones(outs.shape, bool), "other": outs == 0}[loss]
    ptr = np.zeros(outs.shape[0] + 1, np.int64)
    np.cumsum(mask.sum(1), out=ptr[1:])
    return Rows(ptr, np.nonzero(mask)[1].astype(np.int64))


def trainable(train):
    """The matrices a trainable set names: "wo2", "all", or an iterable of TRAINABLE names."""
    if isinstance(train, str):
        if train in TRAIN_SETS:
            return TRAIN_SETS[train]
        train = (train,)
    try:
        names = tuple(train)
    except TypeError:
        v.fail("train", f"one of {tuple(TRAIN_SETS)} or names among {TRAINABLE}", repr(train))
    bad = [n for n in names if n not in TRAINABLE]
    if bad or not names:
        v.fail("train", f"one of {tuple(TRAIN_SETS)} or names among {TRAINABLE}", repr(train))
    return tuple(n for n in TRAINABLE if n in names)


class TwoLayer:
    """The model: V tokens, T positions, width d, float32 or float64.

    Initialised as PyTorch initialises birth's model, from numpy's PCG64 stream of ``seed``
    (in the order of MATRICES): wE and P N(0, 1), every linear map U(-1/sqrt d, 1/sqrt d).
    ``weights`` overrides any matrix (a dict of arrays). The arrays are the model's own; a
    training run works on a copy.
    """

    def __init__(self, d=64, seed=0, V=65, seq_len=256, dtype=np.float32, weights=None):
        self.d = v.positive_int("d", d)
        self.V = v.positive_int("V", V)
        if self.V < 2:
            v.fail("V", "an integer >= 2", V)
        self.T = v.positive_int("seq_len", seq_len)
        self.dtype = np.dtype(dtype)
        if self.dtype not in v.FLOAT_DTYPES:
            v.fail("dtype", "float32 or float64", dtype)
        self.seed = v.positive_int("seed", seed, allow_zero=True, below=2**64)
        rng = np.random.default_rng(self.seed)
        a = 1.0 / np.sqrt(self.d)
        shapes = self.shapes()
        init = {}
        for name in MATRICES:
            if name in ("wE", "P"):
                init[name] = rng.standard_normal(shapes[name])
            else:
                init[name] = rng.uniform(-a, a, shapes[name])
        for name, w in (weights or {}).items():
            if name not in MATRICES:
                v.fail("weights", f"names among {MATRICES}", repr(name))
            w = v.float_matrix(name, w, shape=shapes[name])
            if not np.isfinite(w).all():
                v.fail(name, "finite weights", "NaN or Inf")
            init[name] = w
        self.weights = Weights(*(np.ascontiguousarray(init[n], dtype=self.dtype) for n in MATRICES))

    def shapes(self):
        d, V, T = self.d, self.V, self.T
        return {"wE": (V, d), "P": (T, d), "WK1": (d, d), "WV1": (d, d), "WO1": (d, d), "WK2": (d, d),
                "WV2": (d, d), "WO2": (d, d), "WU": (V, d)}

    def __repr__(self):
        return f"TwoLayer(d={self.d}, V={self.V}, seq_len={self.T}, dtype={self.dtype.name}, seed={self.seed})"

    def copy(self):
        m = TwoLayer.__new__(TwoLayer)
        m.__dict__.update(self.__dict__)
        m.weights = Weights(*(w.copy() for w in self.weights))
        return m

    def check_batch(self, batch, task=None):
        if not isinstance(batch, Batch):
            v.fail("batch", "a fm.transformer.Batch (task.sample(...))", type(batch).__name__)
        B, T1 = batch.z.shape
        if T1 - 1 != self.T or batch.outs.shape != (B, self.T):
            v.fail("batch", f"sequences of {self.T} + 1 tokens (the model's seq_len)", f"z of shape {batch.z.shape}")
        v.tokens("batch.z", batch.z, self.V)
        return batch

    def loss(self, batch, loss="head", backend=None):
        """The mean cross-entropy of ``batch`` at the rows of ``loss`` ("head", "all" or
        "other": the non-trigger positions)."""
        return self.loss_and_grads(batch, (), loss, backend)[0]

    def loss_and_grads(self, batch, train="all", loss="head", backend=None):
        """(loss, {name: gradient}) of the mean cross-entropy at the rows of ``loss``, for the
        matrices of the trainable set ``train`` (() for none)."""
        self.check_batch(batch)
        if loss not in LOSSES + ("other",):
            v.fail("loss", f"one of {LOSSES + ('other',)}", repr(loss))
        names = trainable(train) if train != () else ()
        rows = rows_of(batch.outs, loss)
        n = int(rows.ptr[-1])
        if n == 0:
            v.fail("batch", f"at least one position of the {loss!r} loss", "none")
        shapes = self.shapes()
        grads = Grads(**{k: np.empty(shapes[k], self.dtype) for k in names})
        w = type(self.weights)(*(np.ascontiguousarray(a) for a in self.weights))
        total = get(backend, kernel="ihead_loss_grads").ihead_loss_grads(w, batch.z, rows, 1.0 / n, grads)
        return float(total), {k: getattr(grads, k) for k in names}
