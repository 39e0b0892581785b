"""The one table of shapes and tolerances every backend is tested on."""

import numpy as np
import pytest

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
