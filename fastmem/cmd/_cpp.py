"""CMD's kernels on the compiled C++ backend (csrc/python/bind_cmd.cpp)."""

from .. import _core


def cmd_assign_fit(theta, refs, mode, a, b, corr):
    _core.cmd_assign_fit(theta, refs, mode, a, b, corr)


def cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    _core.cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co)
