"""The compiled C++ backend (fastmem._core, the module built for this CPU: fastmem/_core.py).
Each system's adapters with the registry's signatures are in its package (fastmem/<system>/_cpp.py)."""

from .. import _core

INFO = _core.info()
