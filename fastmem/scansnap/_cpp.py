"""Scan and Snap's kernels on the compiled C++ backend (csrc/python/bind_scansnap.cpp)."""

from .. import _core


def scansnap_train(Yt, Z, mY, vY, mZ, vZ, facts, sequences, spec, out):
    return _core.scansnap_train(Yt, Z, mY, vY, mZ, vZ, facts, sequences, spec, out)
