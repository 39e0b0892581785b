"""Training Scan and Snap's 1-layer transformer: the sampled simulator (batches of L-token
sequences from the counter-based stream) and the population simulator (the exact
long-sequence-limit dynamics), on one kernel per backend (``scansnap_train``)."""

import inspect
import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .. import _validate as v
from ..backends import get
from ..specs import OptimizerKind, OptimizerSpec
from .._rng import splitmix64 as _splitmix64
from .data import Facts, Sequences
from .metrics import attention_metrics

OPTIMIZERS = {"sgd": OptimizerKind.SGD, "adam": OptimizerKind.ADAM}  # the values kernels/scansnap.hpp reads
SIMULATORS = ("sampled", "population")
INITS = ("zero", "torch")
RECORDABLE = ("attention", "Y", "Z")
_INIT_STREAM = 0x5343414E534E4150  # "SCANSNAP": the init's stream, apart from the sampler's
_STATUS = {0: "ok", 1: "diverged", 2: "interrupted"}


class Spec(NamedTuple):
    """One run as the kernels read it (csrc/include/fastmem/train_scansnap.hpp: Spec)."""

    population: bool
    batch: int
    L: int
    seed: int
    start_step: int
    steps: int
    lr_y: float
    lr_z: float
    opt: OptimizerSpec  # SGD (momentum) or Adam; its lr unused (lr_y and lr_z)
    adam_t0: int
    record: np.ndarray


class Outputs(NamedTuple):
    loss: np.ndarray
    rec_loss: np.ndarray
    rec_Zq: object
    rec_Y: object
    rec_Z: object


def init(M, kind="zero", seed=0, dtype=np.float64):
    """(Y, Z), each M x M: zeros, or PyTorch's default for nn.Linear(M, M) ("torch": uniform
    on [-1/sqrt(M), 1/sqrt(M)]) drawn from fastmem's counter-based stream of ``seed``."""
    M = v.positive_int("M", M)
    if kind not in INITS:
        v.fail("init", f"one of {INITS}", repr(kind))
    dtype = np.dtype(dtype)
    if dtype not in v.FLOAT_DTYPES:
        v.fail("dtype", "float32 or float64", dtype)
    if kind == "zero":
        return np.zeros((M, M), dtype), np.zeros((M, M), dtype)
    key = _splitmix64(np.array([v.positive_int("seed", seed, allow_zero=True, below=2**64) ^ _INIT_STREAM],
                               dtype=np.uint64))
    w = np.empty(2 * M * M, dtype)
    block = 1 << 20  # drawn in blocks: no float64 temporaries of the whole size
    for i in range(0, w.size, block):
        bits = _splitmix64(key ^ _splitmix64(np.arange(i, min(i + block, w.size), dtype=np.uint64)))
        w[i:i + block] = (2.0 * ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1.0) / np.sqrt(M)
    w = w.reshape(2, M, M)
    return w[0], w[1]


_init = init  # train's ``init`` argument shadows the function


@dataclass
class Records:
    """What a run recorded at ``steps`` (R global steps): loss (R,) (the batch's loss before
    that step's update; the population loss for the population simulator) and, for facts,
    per fact (F): attention (R, F, M) the long-sequence-limit attention c_n, entropy (R, F)
    over n's distinct tokens (renormalised), common_mass (R, F), argmax (R, F); Y and Z
    (R, M, M) where asked for."""

    steps: np.ndarray
    loss: np.ndarray
    attention: object = None
    entropy: object = None
    common_mass: object = None
    argmax: object = None
    Y: object = None
    Z: object = None


@dataclass
class ScanSnapRun:
    """A finished (or diverged, or interrupted) run. loss (steps_done,): each step's loss
    before its update (empty with ``step_loss=False``); Y, Z (M x M) the final parameters (Y in the authors' layout, logits =
    Y f); status "ok", "diverged" or "interrupted". ``fm.scansnap.train(..., resume=run)``
    continues it bit-exactly where it stopped."""

    _Yt: np.ndarray = field(repr=False)  # Y^T, C-contiguous: the kernels' layout
    Z: np.ndarray
    loss: np.ndarray
    records: Records
    status: str
    steps_done: int
    start_step: int
    config: dict
    _opt_state: dict = field(default_factory=dict, repr=False)

    @property
    def Y(self):
        """(M, M) read-only view (Fortran order) of the run's final Y: no copy at M = 8,192."""
        y = self._Yt.T
        y.flags.writeable = False
        return y

    @property
    def next_step(self):
        return self.start_step + self.steps_done


def _record_steps(record_steps, start, steps):
    if record_steps is None:  # every step, or 1,001 evenly spaced ones on a long run
        return np.unique(np.linspace(start, start + steps, min(steps, 1000) + 1).round().astype(np.int64))
    if isinstance(record_steps, numbers.Integral) and not isinstance(record_steps, bool):
        every = v.positive_int("record_steps", record_steps)
        r = np.arange(start, start + steps + 1, every, dtype=np.int64)
        return r if r[-1] == start + steps else np.append(r, start + steps)
    r = np.asarray(record_steps)
    if r.ndim == 1 and r.size == 0:
        return np.empty(0, dtype=np.int64)
    if r.ndim != 1 or r.dtype.kind not in "iu":
        v.fail("record_steps", "an int (record every k steps) or a 1-D array of steps", repr(record_steps))
    r = np.unique(r.astype(np.int64))
    if r.size and (r[0] < start or r[-1] > start + steps):
        v.fail("record_steps", f"steps in [{start}, {start + steps}]", f"[{r[0]}, {r[-1]}]")
    return r


def _same_as_resumed(given, ratio, config):
    """A setting passed with ``resume`` must be the resumed run's: resume goes on with its own
    settings, and one asked for otherwise would be silently ignored. A setting left at its
    default is taken from the run."""
    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()}

    def same(a, b, k):
        return np.dtype(a) == np.dtype(b) if k == "dtype" else tuple(np.atleast_1d(a)) == tuple(np.atleast_1d(b))

    for k, x in given.items():
        if x is not None and not same(x, defaults[k], k) and not same(x, config[k], k):
            v.fail(k, f"{config[k]!r}, the resumed run's (resume goes on with its settings), or left out", repr(x))
    if ratio != defaults["ratio"] and given["lr_y"] is None and ratio * config["lr_z"] != config["lr_y"]:
        v.fail("ratio", f"lr_y / lr_z = {config['lr_y'] / max(config['lr_z'], 1e-300):g}, the resumed run's, "
                        "or left out", repr(ratio))


def train(data, steps=100, *, batch=128, L=128, lr_z=1.0, ratio=1.0, lr_y=None, optimizer="sgd",
          momentum=0.9, betas=(0.9, 0.999), eps=1e-8, init="zero", Y=None, Z=None, seed=0,
          simulator="sampled", record_steps=None, record=("attention",), step_loss=True, dtype=np.float64,
          backend=None, resume=None):
    """Train the 1-layer transformer of Scan and Snap on ``data``.

    data : fm.scansnap.Facts (sampled or population) or fm.scansnap.Sequences (sampled)
    steps : iterations; batch, L : sequences per batch and their length (the last token the query)
    lr_z : Z's learning rate; Y's is ``lr_y``, by default lr_z * ratio (the authors' lr_y_multi_on_z)
    optimizer : "sgd" (torch.optim.SGD, ``momentum``; two optimizers, as the authors run) or
        "adam" (``betas``, ``eps``)
    init : "zero" or "torch" (PyTorch's nn.Linear default, from ``seed``); or Y, Z given (M x M)
    seed : the init's and the sampler's seed
    simulator : "sampled", or "population": the exact long-sequence-limit dynamics, one row per
        fact (no sampling; batch and L unused)
    record_steps : None (every step 0 .. steps, or 1,001 evenly spaced steps past 1,000), an int k
        (every k steps and the last), or the global steps to record
    record : what besides the loss: "attention" (with the per-fact metrics; facts only), "Y", "Z"
    step_loss : keep each step's loss (``run.loss``, 8 bytes a step); False keeps the recorded
        steps' loss only (``run.records.loss``): memory then follows what is recorded
    dtype : float32 or float64
    resume : a ScanSnapRun to continue (its data and settings; ``steps`` more)

    Returns a ScanSnapRun. A diverging run stops with status "diverged" (never raises); Ctrl-C
    raises KeyboardInterrupt with ``exc.run``, the run so far.
    """
    if not isinstance(data, (Facts, Sequences)):
        v.fail("data", "fm.scansnap.Facts or fm.scansnap.Sequences", type(data).__name__)
    steps = v.positive_int("steps", steps, allow_zero=True, below=2**40)
    if resume is not None:
        if not isinstance(resume, ScanSnapRun):
            v.fail("resume", "a ScanSnapRun", type(resume).__name__)
        if Y is not None or Z is not None:
            v.fail("Y, Z", "None when resuming (the run goes on from resume's Y and Z)", "arrays")
        c = resume.config
        if c["M"] != data.M:
            v.fail("resume", f"a run over M = {data.M} tokens", f"M = {c['M']}")
        start = resume.next_step
        given = dict(batch=batch, L=L, lr_y=lr_y, lr_z=lr_z, seed=seed, simulator=simulator, optimizer=optimizer,
                     momentum=momentum, betas=betas, eps=eps, dtype=dtype)
        _same_as_resumed(given, ratio, c)
        batch, L, lr_y, lr_z, seed, simulator = c["batch"], c["L"], c["lr_y"], c["lr_z"], c["seed"], c["simulator"]
        optimizer, momentum, betas, eps, dtype = c["optimizer"], c["momentum"], c["betas"], c["eps"], c["dtype"]
    else:
        start = 0
    batch = v.positive_int("batch", batch, below=2**31)
    L = v.positive_int("L", L, below=2**31)
    if L < 2:
        v.fail("L", "a sequence length >= 2 (context and query)", L)
    if isinstance(data, Sequences) and data.L != L:
        v.fail("L", f"the sequences' length {data.L}", L)
    lr_z = v.positive_float("lr_z", lr_z, allow_zero=True)
    if lr_y is None:
        lr_y = lr_z * v.positive_float("ratio", ratio)
    lr_y = v.positive_float("lr_y", lr_y, allow_zero=True)
    if lr_y == 0 and lr_z == 0:
        v.fail("lr_y, lr_z", "at least one learning rate > 0", "both 0")
    if optimizer not in OPTIMIZERS:
        v.fail("optimizer", f"one of {tuple(OPTIMIZERS)}", repr(optimizer))
    momentum = v.unit_interval("momentum", momentum)
    if len(betas) != 2:
        v.fail("betas", "a pair (beta1, beta2)", repr(betas))
    betas = (v.unit_interval("betas[0]", betas[0]), v.unit_interval("betas[1]", betas[1]))
    eps = v.positive_float("eps", eps)
    seed = v.positive_int("seed", seed, allow_zero=True, below=2**64)
    if simulator not in SIMULATORS:
        v.fail("simulator", f"one of {SIMULATORS}", repr(simulator))
    if simulator == "population" and not isinstance(data, Facts):
        v.fail("simulator", "'sampled' for user sequences (the population needs facts)", repr(simulator))
    record = tuple(record)
    for r in record:
        if r not in RECORDABLE:
            v.fail("record", f"names among {RECORDABLE}", repr(r))
    if "attention" in record and not isinstance(data, Facts):
        record = tuple(r for r in record if r != "attention")
    dtype = np.dtype(dtype)
    if dtype not in v.FLOAT_DTYPES:
        v.fail("dtype", "float32 or float64", dtype)
    M = data.M
    if resume is not None:
        Yt, Z = resume._Yt.copy(), resume.Z.copy()
    else:
        if Y is None and Z is None:
            Y, Z = _init(M, init, seed, dtype)
        elif Y is None or Z is None:
            v.fail("Y, Z", "both given, or neither (then init decides)", "one of them")
        Y = v.float_matrix("Y", Y, shape=(M, M), dtype=dtype)
        Z = v.float_matrix("Z", Z, shape=(M, M), dtype=dtype).copy()
        Yt = np.ascontiguousarray(Y.T)
    rec_steps = _record_steps(record_steps, start, steps)

    opt_state = {}
    if optimizer == "adam" or momentum != 0.0:
        old = resume._opt_state if resume is not None else {}
        names = ("mY", "mZ", "vY", "vZ") if optimizer == "adam" else ("mY", "mZ")
        opt_state = {k: old[k].copy() if k in old else np.zeros((M, M), dtype) for k in names}
    adam_t0 = resume._opt_state.get("adam_t", 0) if resume is not None else 0
    opt = OptimizerSpec(OPTIMIZERS[optimizer], 0.0, momentum if optimizer == "sgd" else 0.0, 0.0, *betas, eps)
    spec = Spec(simulator == "population", batch, L, seed, start, steps, lr_y, lr_z, opt, adam_t0, rec_steps)
    R, F = len(rec_steps), (data.F if isinstance(data, Facts) else 0)
    if step_loss:
        v.fits_in_memory("steps", 8 * steps, "each step's loss", f"{steps:,} steps",
                         " (step_loss=False keeps the recorded steps' loss only)")
    out = Outputs(np.full(steps if step_loss else 0, np.nan), np.full(R, np.nan),
                  np.zeros((R, F, M), dtype) if "attention" in record else None,
                  np.zeros((R, M, M), dtype) if "Y" in record else None,
                  np.zeros((R, M, M), dtype) if "Z" in record else None)
    facts = data.tables() if isinstance(data, Facts) else None
    seqs = data.tables() if isinstance(data, Sequences) else None
    config = dict(M=M, batch=batch, L=L, lr_y=lr_y, lr_z=lr_z, seed=seed, simulator=simulator, optimizer=optimizer,
                  momentum=momentum, betas=betas, eps=eps, dtype=dtype)
    kernel = get(backend, kernel="scansnap_train").scansnap_train

    def finish(status, done, n_rec):
        state = dict(opt_state)
        if optimizer == "adam":
            state["adam_t"] = adam_t0 + done
        recs = Records(rec_steps[:n_rec], out.rec_loss[:n_rec])
        if out.rec_Zq is not None:
            recs.attention, recs.entropy, recs.common_mass, recs.argmax = attention_metrics(data, out.rec_Zq[:n_rec])
        recs.Y = out.rec_Y[:n_rec] if out.rec_Y is not None else None
        recs.Z = out.rec_Z[:n_rec] if out.rec_Z is not None else None
        return ScanSnapRun(Yt, Z, out.loss[:done].copy(), recs, _STATUS[status], done, start, config, state)

    try:
        status, done, n_rec = kernel(Yt, Z, opt_state.get("mY"), opt_state.get("vY"), opt_state.get("mZ"),
                                     opt_state.get("vZ"), facts, seqs, spec, out)
    except KeyboardInterrupt as exc:
        done, n_rec = getattr(exc, "fastmem_progress", (0, 0))
        exc.run = finish(2, done, n_rec)
        raise
    return finish(status, done, n_rec)
