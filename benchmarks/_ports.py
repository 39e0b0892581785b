"""The PyTorch ports the peer scripts compare against live in tests/ (the tests check them
against fastmem); the scripts load them from there."""

import importlib.util
from pathlib import Path


def load_port(name):
    """tests/NAME.py as a module."""
    path = Path(__file__).resolve().parents[1] / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
