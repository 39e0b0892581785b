"""Correlation Mode Decomposition (docs/cmd.md): post-hoc (``fit``), online (``OnlineCMD``) and
embedded in training (``EmbeddedCMD``), on the compiled kernels of kernels/cmd.hpp."""

from .decomposition import CMDResult, EmbeddedCMD, OnlineCMD, fit, sample_indices

__all__ = ["CMDResult", "EmbeddedCMD", "OnlineCMD", "fit", "sample_indices"]
