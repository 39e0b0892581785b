"""Correlation Mode Decomposition (docs/cmd.md): post-hoc (``fit``), online (``OnlineCMD``) and
embedded in training (``EmbeddedCMD``), on the compiled kernels of kernels/cmd.hpp."""

from ..backends import register as _register

_register(__name__, {  # CMD's kernels, as fastmem.memory's
    "cmd_assign_fit": ("theta", "refs", "mode", "a", "b", "corr"),
    "cmd_online_update": ("theta_t", "r_t", "mode", "n", "r_mean", "r_m2", "theta_mean", "co"),
})

from .decomposition import CMDResult, EmbeddedCMD, OnlineCMD, fit, sample_indices

__all__ = ["CMDResult", "EmbeddedCMD", "OnlineCMD", "fit", "sample_indices"]
