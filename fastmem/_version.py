"""fastmem's version (its own module: what records it, a sweep's sweep.json, imports no more)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastmem")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
