"""The induction-head task (Bietti et al., *Birth of a Transformer*, ihead_data.py): sequences of
character bigrams in which k trigger tokens are always followed, within a sequence, by that
sequence's output token for them (docs/transformer.md). Batches come from fastmem's
counter-based stream: batch ``step`` of seed ``seed`` is the same on every backend, alone, so
that a run resumes exactly and every learning rate of a sweep can see the same batches."""

import functools
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np

from .. import _validate as v
from ..backends import get
from ..scansnap.data import _readonly, alias_table


class Tables(NamedTuple):
    """What the sampler reads: pi (V) and Walker alias tables of pi and of C's rows."""

    pi: np.ndarray
    pi_thresh: np.ndarray
    pi_alias: np.ndarray
    cond_thresh: np.ndarray  # V x V
    cond_alias: np.ndarray   # V x V


class SampleSpec(NamedTuple):
    seed: int
    step: int
    k: int
    random_triggers: bool
    bigram_outputs: bool
    triggers: np.ndarray  # (k,) int64, or empty when random


class Batch(NamedTuple):
    """B sequences: z (B, T + 1) int64 tokens; outs (B, T) int64, outs[b, t] = the number of
    occurrences of z[b, t] so far when it is a trigger (its target z[b, t + 1] is then the
    trigger's output), else 0. The model reads x = z[:, :T] and predicts y = z[:, 1:]."""

    z: np.ndarray
    outs: np.ndarray

    @property
    def x(self):
        return self.z[:, :-1]

    @property
    def y(self):
        return self.z[:, 1:]


@dataclass(frozen=True, eq=False)
class Bigrams:
    """A character bigram model: pi (V,) the marginal law of a token, C (V, V) the law of the
    next token given the current one (rows summing to 1), chars (V,) their characters or None.
    Read-only copies; counts are normalised."""

    pi: np.ndarray
    C: np.ndarray
    chars: object = None

    def __init__(self, unigram, bigram, chars=None):
        C = v.real_array("bigram", bigram)
        if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
            v.fail("bigram", "a V x V table of counts or probabilities (V >= 2)", f"shape {C.shape}")
        V = C.shape[0]
        pi = v.real_array("unigram", unigram)
        if pi.shape != (V,):
            v.fail("unigram", f"shape ({V},), one count per token of the bigram table", f"shape {pi.shape}")
        for name, a in (("unigram", pi), ("bigram", C)):
            if not np.isfinite(a).all() or (a < 0).any():
                v.fail(name, "finite counts or probabilities >= 0", "a negative or non-finite entry")
        rows = C.sum(1)
        if (rows <= 0).any():
            v.fail("bigram", "rows with a positive sum (every token needs a next-token law)",
                   f"row {int(np.argmax(rows <= 0))} summing to 0")
        if pi.sum() <= 0:
            v.fail("unigram", "a positive total", "all zeros")
        if chars is not None:
            chars = tuple(str(c) for c in chars)
            if len(chars) != V:
                v.fail("chars", f"{V} characters", f"{len(chars)}")
        object.__setattr__(self, "pi", _readonly(pi / pi.sum()))
        object.__setattr__(self, "C", _readonly(C / rows[:, None]))
        object.__setattr__(self, "chars", chars)

    @property
    def V(self):
        return self.C.shape[0]

    @classmethod
    def shakespeare(cls):
        """The tiny-Shakespeare character tables of the authors' data/meta.pkl (65 characters,
        1,115,394 characters of text), shipped with fastmem: no download."""
        return _shakespeare()

    @classmethod
    def from_text(cls, text):
        """The character bigrams of ``text`` (every consecutive pair, as the authors' prepare.py
        counts them). A character never followed by another (the text's last, seen once) gets
        the unigram law as its next-token row."""
        if not isinstance(text, str) or len(text) < 2:
            v.fail("text", "a string of at least 2 characters", repr(text)[:40])
        chars = sorted(set(text))
        if len(chars) < 2:
            v.fail("text", "at least 2 distinct characters", repr(chars))
        ids = np.searchsorted(np.array([ord(c) for c in chars]), np.array([ord(c) for c in text]))
        V = len(chars)
        uni = np.bincount(ids, minlength=V).astype(np.float64)
        bi = np.bincount(ids[:-1] * V + ids[1:], minlength=V * V).reshape(V, V).astype(np.float64)
        empty = bi.sum(1) == 0
        bi[empty] = uni
        return cls(uni, bi, chars)

    @classmethod
    def zipf(cls, V=65, seed=0, alpha=1.45):
        """A synthetic stand-in: row r a Zipf(alpha) law over its own random order of the tokens
        times a Zipf(1) global popularity; pi its stationary law."""
        V = v.positive_int("V", V)
        if V < 2:
            v.fail("V", "an integer >= 2", V)
        alpha = v.positive_float("alpha", alpha)
        rng = np.random.default_rng(v.positive_int("seed", seed, allow_zero=True))
        pop = 1.0 / np.arange(1, V + 1)
        ranks = np.argsort(rng.random((V, V)), axis=1)
        C = (ranks + 1.0) ** -alpha * pop[None, :]
        C /= C.sum(1, keepdims=True)
        w, vec = np.linalg.eig(C.T)
        pi = np.abs(np.real(vec[:, np.argmin(np.abs(w - 1.0))]))
        return cls(pi, C)

    @functools.cached_property
    def _tables(self):
        thr, ali = alias_table(self.pi)
        ct = np.empty((self.V, self.V), np.uint64)
        ca = np.empty((self.V, self.V), np.int64)
        for r in range(self.V):
            ct[r], ca[r] = alias_table(self.C[r])
        t = Tables(np.ascontiguousarray(self.pi), thr, ali, ct, ca)
        for a in t:
            a.setflags(write=False)
        return t

    def tables(self):
        """The sampler's Tables (read-only; computed once: a Bigrams cannot change)."""
        return self._tables


@functools.lru_cache(maxsize=1)
def _shakespeare():
    with resources.files(__package__).joinpath("shakespeare_char_bigrams.npz").open("rb") as f:
        d = np.load(f, allow_pickle=False)
        return Bigrams(d["unigram_counts"], d["bigram_counts"], [chr(c) for c in d["chars"]])


TRIGGER_MODES = ("fixed", "random")
OUTPUT_MODES = ("uniform", "bigram")


@dataclass(frozen=True, eq=False)
class InductionHeads:
    """The induction-head task: sequences of ``seq_len`` + 1 tokens from ``bigrams`` (default the
    Shakespeare tables) with k triggers. triggers: "fixed" (the k most frequent tokens, skipping
    the ``offset`` most frequent: the authors' fixed_special_toks), "random" (k tokens per
    sequence drawn from pi without replacement) or the k token ids; outputs: "uniform" over the
    V tokens (the authors' default) or "bigram" (from the trigger's bigram row)."""

    k: int = 5
    seq_len: int = 256
    bigrams: Bigrams = None
    triggers: object = "fixed"
    outputs: str = "uniform"
    offset: int = 0

    def __post_init__(self):
        bg = self.bigrams if self.bigrams is not None else Bigrams.shakespeare()
        if not isinstance(bg, Bigrams):
            v.fail("bigrams", "a fm.transformer.Bigrams", type(bg).__name__)
        V = bg.V
        k = v.positive_int("k", self.k)
        if k > V:
            v.fail("k", f"at most the vocabulary's {V} tokens", k)
        T = v.positive_int("seq_len", self.seq_len, below=2**31)
        offset = v.positive_int("offset", self.offset, allow_zero=True)
        if self.outputs not in OUTPUT_MODES:
            v.fail("outputs", f"one of {OUTPUT_MODES}", repr(self.outputs))
        if isinstance(self.triggers, str):
            if self.triggers not in TRIGGER_MODES:
                v.fail("triggers", f"one of {TRIGGER_MODES} or k token ids", repr(self.triggers))
            if self.triggers == "fixed":
                if k + offset > V:
                    v.fail("offset", f"at most V - k = {V - k}", offset)
                # the authors' pi.argsort()[V - offset - k : V - offset] (stable: ties by id)
                trig = np.argsort(bg.pi, kind="stable")[V - offset - k: V - offset]
            else:
                if k > int((bg.pi > 0).sum()):
                    v.fail("k", f"at most the {int((bg.pi > 0).sum())} tokens of positive probability", k)
                trig = np.empty(0, np.int64)
        else:
            trig = v.tokens("triggers", self.triggers, V, shape=(k,))
            if len(np.unique(trig)) != k:
                v.fail("triggers", "k distinct token ids", repr(list(trig)))
        object.__setattr__(self, "bigrams", bg)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "seq_len", T)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "_trig", _readonly(np.asarray(trig, np.int64)))

    @property
    def V(self):
        return self.bigrams.V

    @property
    def random_triggers(self):
        return isinstance(self.triggers, str) and self.triggers == "random"

    @property
    def trigger_tokens(self):
        """(k,) the fixed triggers (None when they are drawn per sequence)."""
        return None if self.random_triggers else self._trig

    def sample(self, batch_size=512, seed=0, step=0, backend=None):
        """Batch ``step`` of the stream ``seed``: a Batch of ``batch_size`` sequences."""
        B = v.positive_int("batch_size", batch_size, below=2**31)
        spec = SampleSpec(v.positive_int("seed", seed, allow_zero=True, below=2**64),
                          v.positive_int("step", step, allow_zero=True, below=2**40), self.k, self.random_triggers,
                          self.outputs == "bigram", self._trig)
        z = np.empty((B, self.seq_len + 1), np.int64)
        outs = np.empty((B, self.seq_len), np.int64)
        get(backend, kernel="ihead_sample").ihead_sample(self.bigrams.tables(), spec, z, outs)
        return Batch(z, outs)
