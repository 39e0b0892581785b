"""The one table of shapes and tolerances every backend is tested on."""

import contextlib

import numpy as np
import pytest

import fastmem as fm
from fastmem.backends import numpy_ref

# (b, d, M, chunk) for the fused kernel: b = 1, M = 2, M not a multiple of the
# chunk, a chunk of 1, and M = 65,537 (streamed in many chunks).
FUSED_SHAPES = [
    pytest.param(1, 3, 2, None, id="b1-M2"),
    pytest.param(5, 1, 2, None, id="d1"),
    pytest.param(17, 8, 37, 16, id="M37-chunk16"),
    pytest.param(9, 6, 11, 1, id="chunk1"),
    pytest.param(33, 20, 300, 64, id="M300-chunk64"),
    pytest.param(3, 16, 65537, None, id="M65537"),
    pytest.param(4, 8, 65537, 4096, id="M65537-chunk4096"),
]

# (N, M, d) problems for metrics and training: N = 1, M = 2, d = 1, N > d, d > N.
PROBLEMS = [
    pytest.param(1, 2, 3, id="N1"),
    pytest.param(2, 2, 2, id="N2-M2"),
    pytest.param(7, 3, 1, id="d1"),
    pytest.param(30, 5, 4, id="N>d"),
    pytest.param(12, 37, 24, id="M37"),
]

DTYPES = [np.float32, np.float64]

# Tolerances relative to the scale of the reference values.
RTOL = {np.float32: 2e-4, np.float64: 1e-10}


def assert_close(got, want, dtype, scale=None, factor=1.0):
    """|got - want| <= factor * RTOL * max(scale, max|want|, 1e-30)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(np.abs(want).max(initial=0.0), scale or 0.0, 1e-30)
    err = np.abs(got - want).max(initial=0.0)
    assert err <= factor * RTOL[dtype] * scale, f"max error {err:.3g} > {factor * RTOL[dtype]:.1g} * {scale:.3g}"


@contextlib.contextmanager
def naive_precision(dtype):
    """The numpy reference computing in ``dtype`` itself (every product, softmax and update in
    float32, as a plain numpy or PyTorch float32 implementation of the same steps would): the
    naive same-precision run that float32 kernels are held to."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(numpy_ref, "F", dtype)
        yield


# The compiled kernels' own rounding, which a short well-conditioned run does not amplify: their
# float32 exp is Cephes' polynomial (within 2 ulp) and their softmax streams over chunks, so a few
# dozen steps end some ulps from where plain numpy float32 (1-2 ulps off there) ends.
KERNEL_ULPS = 32


def assert_within_naive(got, want, naive, dtype, scale=1.0):
    """A float32 trajectory at most twice as far from the float64 reference ``want`` as the naive
    float32 run ``naive`` of the same steps, plus KERNEL_ULPS of ``scale``: in max norm,
    |got - want| <= 2 |naive - want| + KERNEL_ULPS eps max(scale, |want|)."""
    got, want, naive = (np.asarray(a, dtype=np.float64) for a in (got, want, naive))
    naive_err = np.abs(naive - want).max(initial=0.0)
    err = np.abs(got - want).max(initial=0.0)
    bound = 2 * naive_err + KERNEL_ULPS * np.finfo(dtype).eps * max(scale, np.abs(want).max(initial=0.0))
    assert err <= bound, f"max error {err:.3g} > {bound:.3g} (twice the naive run's {naive_err:.3g} + ulps)"


def assert_trajectory(got, train, dtype, names, factor64=20):
    """The arrays ``names`` of the run ``got`` against the reference run ``train("numpy")`` (a
    call of fm.train or the like): in float64 within factor64 * RTOL, in float32 within twice
    the error of the naive float32 run of the same steps. Returns the reference run."""
    want = train("numpy")
    if dtype == np.float64:
        for name in names:
            assert_close(getattr(got, name), getattr(want, name), dtype, scale=1.0, factor=factor64)
        return want
    with naive_precision(dtype):
        naive = train("numpy")
    for name in names:
        assert_within_naive(getattr(got, name), getattr(want, name), getattr(naive, name), dtype)
    return want


# Optimizers of the trajectory tests (test_train.py).
TRAIN_OPTIMIZERS = [
    pytest.param(fm.SGD(lr=0.5), id="sgd"),
    pytest.param(fm.SGD(lr=0.3, momentum=0.9, weight_decay=0.01), id="momentum-wd"),
    pytest.param(fm.SGD(lr=0.5, schedule=fm.Cosine(steps=40, min_lr=0.01)), id="cosine"),
    pytest.param(fm.SGD(lr=0.5, schedule=fm.StepDecay(every=10, gamma=0.5)), id="step"),
    pytest.param(fm.Adam(lr=0.02), id="adam"),
    # eps keeps g / (|g| + eps) well conditioned at g ~ 0, where rounding would otherwise decide
    pytest.param(fm.Adam(lr=0.02, betas=(0.0, 0.0), eps=1e-4, weight_decay=0.1), id="adam00-wd"),
    pytest.param(fm.SignGD(lr=0.01), id="sign"),
]

# g / (|g| + eps) has slope 1 / eps at g = 0: with eps = 1e-8 a rounding difference of 1e-16
# in a vanishing gradient entry moves the update by 1e-8, and full-batch runs amplify it, for
# any two implementations. The trajectories are compared where the update is well conditioned.
PROJECTED_OPTIMIZERS = [
    pytest.param(fm.Adam(lr=0.05, betas=(0.0, 0.0), eps=1e-4), id="adam00"),
    pytest.param(fm.Adam(lr=0.05, betas=(0.0, 0.0), eps=0.3, weight_decay=0.1), id="adam00-eps-wd"),
    pytest.param(fm.SignGD(lr=0.02, schedule=fm.Cosine(30)), id="sign-cosine"),
]

# (R, N, M, d): one run, N = 1, M = 2, d = 1 (the device's primal block path), d > N (its dual
# path), and a run too large for one thread block (its batched cuBLAS path).
MANY_SHAPES = [
    pytest.param(1, 3, 2, 4, id="R1"),
    pytest.param(4, 1, 2, 3, id="N1-M2"),
    pytest.param(3, 7, 3, 1, id="d1"),
    pytest.param(6, 6, 3, 16, id="d>N"),
    pytest.param(5, 12, 5, 8, id="N>d"),
    pytest.param(2, 300, 300, 170, id="large"),
]

# Optimizer, batch size and representation of the save/load/resume test (test_embed.py).
STATE_CASES = [
    pytest.param(fm.SGD(lr=0.5, momentum=0.9), 8, "primal", id="momentum-primal"),
    pytest.param(fm.Adam(lr=0.01), 8, "primal", id="adam-primal"),
    pytest.param(fm.SGD(lr=0.5, momentum=0.9, weight_decay=0.01), 8, "dual", id="momentum-dual"),
    pytest.param(fm.SGD(lr=0.5, schedule=fm.Cosine(1000)), None, "dual", id="gd-cosine-dual"),
]


# Scan and Snap (test_scansnap.py): (data factory, batch, L): M = 2 and L = 2 (one context token),
# batch 1, user facts with shared tokens, user sequences, and a large vocabulary.
def _ss_two_tokens():
    return fm.scansnap.Facts([0], [1], [[0.5, 0.5]])


def _ss_user_facts():
    rng = np.random.default_rng(1)
    P = rng.random((5, 37)) * (rng.random((5, 37)) < 0.4)
    P[:, 0] = 0.2  # one token shared by all
    return fm.scansnap.Facts(rng.integers(0, 37, 5), rng.integers(0, 37, 5), P / P.sum(1, keepdims=True))


def _ss_sequences():
    rng = np.random.default_rng(2)
    return fm.scansnap.Sequences(rng.integers(0, 23, (40, 9)), rng.integers(0, 23, 40), M=23)


def _ss_large():
    return fm.scansnap.Facts.synthetic(num_last=4, num_next_per_last=3, num_common=20, num_common_per_last=5,
                                       num_unique_per_next=40)


SCANSNAP_DATA = [
    pytest.param(_ss_two_tokens, 1, 2, id="M2-L2-b1"),
    pytest.param(fm.scansnap.syn_small, 7, 16, id="syn-small"),
    pytest.param(_ss_user_facts, 13, 33, id="user-facts"),
    pytest.param(_ss_sequences, 6, 9, id="sequences"),
    pytest.param(_ss_large, 9, 65, id="M=536"),
]
SCANSNAP_OPTIMIZERS = [
    pytest.param(dict(optimizer="sgd", momentum=0.0), id="sgd"),
    pytest.param(dict(optimizer="sgd", momentum=0.9), id="momentum"),
    # eps well above float32's rounding of the gradient: with 1e-8, an entry whose exact gradient
    # is 0 moves by about lr one way or the other in float32 (|noise| / (|noise| + eps))
    pytest.param(dict(optimizer="adam", betas=(0.9, 0.99), eps=1e-3), id="adam"),
]
