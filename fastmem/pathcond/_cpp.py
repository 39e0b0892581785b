"""PathCond's solver on the compiled C++ backend (csrc/python/bind_pathcond.cpp)."""

from .. import _core


def pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm):
    return _core.pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm)
