"""Scan and Snap's data: facts (query token, next token, context distribution), the authors'
synthetic generator with their token numbering (Syn-Small, Syn-Medium), user sequences, and the
counter-based sampler every backend draws the same tokens from (docs/scansnap.md)."""

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import _validate as v
from .._rng import splitmix64 as _splitmix64

_MASK32 = np.uint64(0xFFFFFFFF)
_TWO32 = 1 << 32


class FactTables(NamedTuple):
    """The facts as the kernels read them: F facts, support CSR (ptr (F+1), tok (nnz)), the
    probabilities over each support and Walker alias tables (slot-local)."""

    q: np.ndarray
    n: np.ndarray
    ptr: np.ndarray
    tok: np.ndarray
    prob: np.ndarray
    thresh: np.ndarray
    alias: np.ndarray


class SequenceTables(NamedTuple):
    tokens: np.ndarray  # S x L int64, the last column the query
    target: np.ndarray  # S int64


def alias_table(p):
    """Walker's alias table (Vose's construction) of the distribution p (s,): slot k is kept
    when 32 random bits fall below thresh[k] (in [0, 2^32]), else alias[k] is drawn."""
    s = len(p)
    scaled = np.asarray(p, dtype=np.float64) * s
    thresh = np.full(s, _TWO32, dtype=np.uint64)
    alias = np.arange(s, dtype=np.int64)
    small = [k for k in range(s) if scaled[k] < 1.0]
    large = [k for k in range(s) if scaled[k] >= 1.0]
    while small and large:
        a, b = small.pop(), large[-1]
        thresh[a] = min(_TWO32, int(round(scaled[a] * _TWO32)))
        alias[a] = b
        scaled[b] -= 1.0 - scaled[a]
        if scaled[b] < 1.0:
            large.pop()
            small.append(b)
    return thresh, alias  # slots left over (rounding) keep themselves


def _readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Facts:
    """F facts over a vocabulary of M tokens: fact f is (query[f], target[f]) with context
    distribution context[f] (M probabilities). ``distinct[f]`` (M bools) marks f's distinct
    tokens (for the entropy metric); the rest of f's support are its common tokens. The
    arrays are fastmem's read-only copies.

    query, target : (F,) int in [0, M)
    context : (F, M) float, each row a distribution
    distinct : (F, M) bool; default: the tokens of f's support in no other fact's support
    """

    query: np.ndarray
    target: np.ndarray
    context: np.ndarray
    distinct: np.ndarray

    def __init__(self, query, target, context, distinct=None):
        P = v.real_array("context", context)
        if P.ndim != 2 or P.shape[0] < 1 or P.shape[1] < 2:
            v.fail("context", "an F x M array of probabilities (F >= 1, M >= 2)", f"shape {P.shape}")
        F, M = P.shape
        if not np.isfinite(P).all() or (P < 0).any():
            v.fail("context", "finite probabilities >= 0", "a negative or non-finite entry")
        sums = P.sum(1)
        if (np.abs(sums - 1.0) > 1e-6).any():
            bad = int(np.argmax(np.abs(sums - 1.0)))
            v.fail("context", "rows that sum to 1 (each a distribution)", f"row {bad} summing to {sums[bad]!r}")
        P = P / sums[:, None]
        q = v.tokens("query", query, M, shape=(F,))
        n = v.tokens("target", target, M, shape=(F,))
        if distinct is None:
            support = P > 0
            distinct = support & (support.sum(0) == 1)[None, :]
        else:
            distinct = np.asarray(distinct)
            if distinct.dtype != bool or distinct.shape != (F, M):
                v.fail("distinct", f"an ({F}, {M}) bool array", f"{distinct.dtype} of shape {distinct.shape}")
            if (distinct & (P == 0)).any():
                v.fail("distinct", "tokens of each fact's support", "a token with probability 0")
        for name, a in (("query", q), ("target", n), ("context", P), ("distinct", distinct)):
            object.__setattr__(self, name, _readonly(a))

    @property
    def F(self):
        return self.context.shape[0]

    @property
    def M(self):
        return self.context.shape[1]

    @property
    def common(self):
        """(F, M) bool: each fact's support less its distinct tokens."""
        return (self.context > 0) & ~self.distinct

    @functools.cached_property
    def _tables(self):
        ptr = np.zeros(self.F + 1, dtype=np.int64)
        toks, probs, threshs, aliases = [], [], [], []
        for f in range(self.F):
            tok = np.flatnonzero(self.context[f] > 0)
            p = self.context[f, tok]
            thresh, alias = alias_table(p)
            ptr[f + 1] = ptr[f] + len(tok)
            toks.append(tok), probs.append(p), threshs.append(thresh), aliases.append(alias)
        cat = np.concatenate
        t = FactTables(self.query.astype(np.int64), self.target.astype(np.int64), ptr,
                       cat(toks).astype(np.int64), cat(probs), cat(threshs), cat(aliases))
        for a in t:
            a.setflags(write=False)
        return t

    def tables(self):
        """The kernels' FactTables (read-only; computed once: the facts cannot change)."""
        return self._tables

    @classmethod
    def synthetic(cls, num_last=2, num_next_per_last=1, num_common=10, num_common_per_last=0,
                  num_unique_per_next=10, common_prob=1.0, unique_min=0.1, unique_max=1.0):
        """The authors' generator (their ``Dataset2``), token numbering in their order: the
        global common tokens, the common tokens of each query, the distinct tokens of each next
        token, the query tokens, the next tokens. Fact (m, n): unnormalised weight
        ``common_prob`` on the global common tokens and m's own common tokens,
        linspace(unique_min, unique_max, num_unique_per_next) on n's distinct tokens."""
        for name, x, zero in (("num_last", num_last, False), ("num_next_per_last", num_next_per_last, False),
                              ("num_common", num_common, True), ("num_common_per_last", num_common_per_last, True),
                              ("num_unique_per_next", num_unique_per_next, False)):
            v.positive_int(name, x, allow_zero=zero)
        common_prob = v.positive_float("common_prob", common_prob)
        unique_min = v.positive_float("unique_min", unique_min)
        unique_max = v.positive_float("unique_max", unique_max)
        n_next = num_last * num_next_per_last
        c0 = num_common
        d0 = c0 + num_last * num_common_per_last
        q0 = d0 + n_next * num_unique_per_next
        t0 = q0 + num_last
        M = t0 + n_next
        P = np.zeros((n_next, M))
        distinct = np.zeros((n_next, M), dtype=bool)
        query = np.empty(n_next, dtype=np.int64)
        target = np.arange(t0, M, dtype=np.int64)
        unique = np.linspace(unique_min, unique_max, num_unique_per_next)
        for i in range(num_last):
            for k in range(num_next_per_last):
                f = i * num_next_per_last + k
                query[f] = q0 + i
                P[f, :c0] = common_prob
                P[f, c0 + i * num_common_per_last: c0 + (i + 1) * num_common_per_last] = common_prob
                sl = slice(d0 + f * num_unique_per_next, d0 + (f + 1) * num_unique_per_next)
                P[f, sl] = unique
                distinct[f, sl] = True
        return cls(query, target, P / P.sum(1, keepdims=True), distinct)


def syn_small():
    """The paper's Syn-Small (Fig. 4): 2 queries, 1 next token each, 10 common and 10 distinct
    tokens per fact, M = 34."""
    return Facts.synthetic(num_last=2, num_next_per_last=1, num_common=10, num_common_per_last=0,
                           num_unique_per_next=10)


def syn_medium(num_last):
    """The paper's Syn-Medium (Fig. 6) for ``num_last`` queries of 2 next tokens each."""
    return Facts.synthetic(num_last=num_last, num_next_per_last=2, num_common=10, num_common_per_last=0,
                           num_unique_per_next=10)


@dataclass(frozen=True, eq=False)
class Sequences:
    """User sequences to sample batches from: tokens (S, L) ints in [0, M), the last column the
    query, the first L - 1 the context; target (S,) the next tokens. Read-only copies."""

    tokens: np.ndarray
    target: np.ndarray
    M: int

    def __init__(self, tokens, target, M):
        M = v.positive_int("M", M)
        if M < 2:
            v.fail("M", "an integer >= 2", M)
        t = np.asarray(tokens)
        if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 2:
            v.fail("tokens", "an S x L array of token ids (S >= 1, L >= 2)", f"shape {t.shape}")
        t = v.tokens("tokens", t, M)
        y = v.tokens("target", target, M, shape=(t.shape[0],))
        object.__setattr__(self, "tokens", _readonly(t))
        object.__setattr__(self, "target", _readonly(y))
        object.__setattr__(self, "M", M)

    @property
    def L(self):
        return self.tokens.shape[1]

    def tables(self):
        return SequenceTables(self.tokens, self.target)


def _bits(seed, counters):
    """kernels/scansnap.hpp's draw_bits: one SplitMix64 mix per draw."""
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    return _splitmix64(key + counters * np.uint64(0x9E3779B97F4A7C15))


def _bounded(bits, n):
    return (((bits >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def draw(facts_tables, seq_tables, seed, step, batch, L):
    """The sequences of global step ``step``'s batch, as the kernels draw them:
    (tokens (batch, L) int64, the last column the query; target (batch,) int64)."""
    base = (np.uint64(step) * np.uint64(batch) + np.arange(batch, dtype=np.uint64)) * np.uint64(L)
    counters = base[:, None] + np.arange(L, dtype=np.uint64)[None, :]
    bits = _bits(seed, counters)
    if seq_tables is not None:
        idx = _bounded(bits[:, 0], len(seq_tables.target))
        return seq_tables.tokens[idx].copy(), seq_tables.target[idx].copy()
    ft = facts_tables
    f = _bounded(bits[:, 0], len(ft.q))
    p0 = ft.ptr[f][:, None]
    s = (ft.ptr[f + 1] - ft.ptr[f])[:, None]
    b = bits[:, 1:]
    k = (((b >> np.uint64(32)) * s.astype(np.uint64)) >> np.uint64(32)).astype(np.int64)
    keep = (b & _MASK32) < ft.thresh[p0 + k]
    local = np.where(keep, k, ft.alias[p0 + k])
    tokens = np.empty((batch, L), dtype=np.int64)
    tokens[:, :-1] = ft.tok[p0 + local]
    tokens[:, -1] = ft.q[f]
    return tokens, ft.n[f].copy()
