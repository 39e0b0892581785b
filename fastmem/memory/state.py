"""Everything a run needs to continue bit-exactly, saved to and loaded from ``.npz`` (no pickle)."""

import json
import math
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidStateError

FORMAT = 3
# the arrays each representation keeps: always, and where the optimizer has state
REQUIRED = {"primal": ("W",), "dual": ("Z", "A")}
OPTIONAL = {"primal": ("m", "v"), "dual": ("mA", "mZ")}
_ARRAYS = ("W", "m", "v", "Z", "A", "mA", "mZ")
# formats 1 and 2 named the dual momentum buffers B and V
_FORMER_NAMES = {"B": "mA", "V": "mZ"}
OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "sign")


def optimizer_kind(o):
    """The optimizer's name as a state records it, from its OptimizerSpec: its kind, and whether
    it keeps moments."""
    kind = o.kind.name.lower()
    return "sgd-momentum" if kind == "sgd" and o.momentum != 0.0 else kind


def stateful_arrays(representation, kind):
    """The optimizer-state arrays a run of this representation and optimizer kind keeps."""
    if representation == "dual":
        return ("mA", "mZ") if kind == "sgd-momentum" else ()
    return {"sgd": (), "sgd-momentum": ("m",), "adam": ("m", "v"), "sign": ()}[kind]


@dataclass
class TrainState:
    """The state after ``step`` global steps of a run seeded with ``seed`` by ``optimizer``
    ("sgd", "sgd-momentum", "adam" or "sign").

    Primal runs keep ``W`` and the optimizer moments ``m``, ``v`` (and ``opt_t``, the
    steps they have seen); dual runs keep ``Z``, ``A`` (and with momentum ``mA``, the
    momentum of A, and ``mZ`` = K_E mA K_U, that of Z) and ``c``. Pass it to
    ``fm.train(..., resume=state)`` with the same memory, task
    and optimizer to continue the run as if it had never stopped.
    """

    representation: str
    step: int
    seed: int
    arrays: dict = field(default_factory=dict)
    c: float = 1.0
    opt_t: int = 0
    optimizer: str = "sgd"

    def __getattr__(self, name):
        if name in _ARRAYS:
            return self.__dict__["arrays"].get(name)
        raise AttributeError(name)

    def save(self, path):
        """Write the state to ``path`` (numpy .npz: the arrays, bit for bit, and a JSON header)."""
        meta = {"representation": self.representation, "step": self.step, "seed": self.seed,
                "c": float(self.c).hex(), "opt_t": self.opt_t, "optimizer": self.optimizer, "format": FORMAT}
        np.savez(path, __meta__=np.array(json.dumps(meta)), **self.arrays)

    @classmethod
    def load(cls, path):
        """Read a state written by :meth:`save` (never unpickles); anything else, or a file
        whose header or arrays do not make a state (unknown format, representation or
        optimizer, negative or out-of-range counters, non-finite values, missing or foreign
        arrays, shapes that disagree), raises InvalidStateError naming what is wrong."""
        try:  # our own file object: np.load leaks its own when the file is not an archive
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                # save() stores its arrays uncompressed, so a state unpacks to about its file's size;
                # a compressed member could unpack to any size (a few MB of zeros to gigabytes)
                packed = [i.filename for i in f.zip.infolist() if i.compress_type != zipfile.ZIP_STORED]
                if packed:
                    raise InvalidStateError(f"{path}: compressed members {packed[:3]}: TrainState.save writes them "
                                            "uncompressed, and a compressed one may unpack to any size")
                if "__meta__" not in f.files:
                    raise InvalidStateError(f"{path}: not a state written by TrainState.save (no header)")
                meta = json.loads(str(f["__meta__"]))
                arrays = {k: f[k] for k in f.files if k != "__meta__"}
        except InvalidStateError:
            raise
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            # ValueError: numpy's allow_pickle refusal, bad JSON; TypeError: a plain .npy (no archive)
            raise InvalidStateError(f"{path}: not a readable state file ({type(exc).__name__})") from None
        if not isinstance(meta, dict):
            raise InvalidStateError(f"{path}: its header is not a JSON object")
        try:
            c = float.fromhex(meta["c"]) if isinstance(meta.get("c"), str) else math.nan
            state = cls(meta["representation"], meta["step"], meta["seed"], arrays, c, meta["opt_t"],
                        meta.get("optimizer"))
        except KeyError as exc:
            raise InvalidStateError(f"{path}: its header has no {exc.args[0]!r}") from None
        except ValueError:
            raise InvalidStateError(f"{path}: header 'c' is not a float in hex") from None
        if meta.get("format") not in (1, 2, FORMAT):
            raise InvalidStateError(f"{path}: format {meta.get('format')!r}, this fastmem reads 1 to {FORMAT}")
        if meta["format"] < 3:
            state.arrays = {_FORMER_NAMES.get(k, k): a for k, a in state.arrays.items()}
        state.validate(str(path), legacy=meta.get("format") == 1)
        return state

    def validate(self, where="state", legacy=False):
        """Check the state's fields and arrays against each other; InvalidStateError if not."""

        def bad(what, got):
            raise InvalidStateError(f"{where}: expected {what}, got {got}")

        if self.representation not in REQUIRED:
            bad(f"representation in {tuple(REQUIRED)}", repr(self.representation))
        for name, top in (("step", 2**63), ("seed", 2**64), ("opt_t", 2**63)):
            x = getattr(self, name)
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < top:
                bad(f"{name} an integer in [0, {top})", repr(x))
        if not math.isfinite(self.c):
            bad("c a finite number", repr(self.c))
        if legacy and self.optimizer is None:  # format 1 did not record it: what the arrays say
            has = set(self.arrays)
            self.optimizer = ("adam" if "v" in has else "sgd-momentum" if has & {"m", "mA"} else "sgd")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer in {OPTIMIZERS}", repr(self.optimizer))
        rep, names = self.representation, set(self.arrays)
        want = set(REQUIRED[rep]) | set(stateful_arrays(rep, self.optimizer))
        if names != want:
            bad(f"arrays {sorted(want)} for a {rep} state of {self.optimizer}", sorted(names))
        shape = self.arrays[REQUIRED[rep][0]].shape
        for name, a in self.arrays.items():
            if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64) or a.ndim != 2:
                bad(f"{name} a 2-D float32/float64 array", f"{getattr(a, 'dtype', type(a))} {np.shape(a)}")
            if a.shape != shape or a.dtype != self.arrays[REQUIRED[rep][0]].dtype:
                bad(f"{name} of the shape and dtype of {REQUIRED[rep][0]} {shape}", f"{a.dtype} {a.shape}")
            if not np.isfinite(a).all():
                bad(f"{name} finite", "NaN or Inf")
        if "v" in self.arrays and (self.arrays["v"] < 0).any():
            bad("v >= 0 (Adam's second moment, a running mean of squared gradients)",
                f"{int((self.arrays['v'] < 0).sum())} negative entries")
        if rep == "primal" and shape[0] != shape[1]:
            bad("W square (d, d)", shape)
