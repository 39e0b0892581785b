"""Everything a run needs to continue bit-exactly, saved to and loaded from ``.npz`` (no pickle)."""

import json
from dataclasses import dataclass, field

import numpy as np

from . import _validate as v

_ARRAYS = ("W", "m", "v", "Z", "A", "B", "V")


@dataclass
class TrainState:
    """The state after ``step`` global steps of a run seeded with ``seed``.

    Primal runs keep ``W`` and the optimizer moments ``m``, ``v`` (and ``opt_t``, the
    steps they have seen); dual runs keep ``Z``, ``A`` (and ``B``, ``V`` with momentum)
    and ``c``. Pass it to ``fm.train(..., resume=state)`` with the same memory, task
    and optimizer to continue the run as if it had never stopped.
    """

    representation: str
    step: int
    seed: int
    arrays: dict = field(default_factory=dict)
    c: float = 1.0
    opt_t: int = 0

    def __getattr__(self, name):
        if name in _ARRAYS:
            return self.__dict__["arrays"].get(name)
        raise AttributeError(name)

    def save(self, path):
        """Write the state to ``path`` (numpy .npz: the arrays, bit for bit, and a JSON header)."""
        meta = {"representation": self.representation, "step": self.step, "seed": self.seed,
                "c": self.c.hex(), "opt_t": self.opt_t, "format": 1}
        np.savez(path, __meta__=np.array(json.dumps(meta)), **self.arrays)

    @classmethod
    def load(cls, path):
        """Read a state written by :meth:`save` (never unpickles)."""
        with np.load(path, allow_pickle=False) as f:
            if "__meta__" not in f.files:
                v.fail("path", "a file written by TrainState.save", str(path))
            meta = json.loads(str(f["__meta__"]))
            arrays = {k: f[k] for k in f.files if k in _ARRAYS}
        return cls(meta["representation"], int(meta["step"]), int(meta["seed"]), arrays,
                   float.fromhex(meta["c"]), int(meta["opt_t"]))
