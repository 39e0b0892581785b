"""Multi-step training in one compiled call, with metrics recorded at chosen steps."""

from dataclasses import dataclass

import numpy as np

from .. import _validate as v
from ..backends import get
from ..errors import InvalidArgumentError
from ..specs import RecordSpec, TrainSpec
from . import representations
from ._problem import chunk_arg, problem_args
from .associative_memory import AssociativeMemory
from .optim import spec_of
from .state import TrainState, optimizer_kind

METRICS = ("loss", "accuracy", "margins", "W", "sharpness")


@dataclass(frozen=True)
class Record:
    """What to record, and when.

    steps : "log" (``num`` log-spaced steps, 0 and the last included), "all", "last",
        an int k (every k steps), or a sequence of step counts in [0, steps].
    metrics : any of "loss", "accuracy", "margins" (N per step), "W" (d x d per
        step), "sharpness" (top Hessian eigenvalue, power iteration).
    """

    steps: object = "log"
    metrics: tuple = ("loss", "accuracy")
    num: int = 100

    def __post_init__(self):
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            v.fail("metrics", f"names among {METRICS}", bad)
        v.positive_int("num", self.num)

    def resolve(self, total):
        """The recorded step counts, sorted and unique, as int64."""
        s = self.steps
        if isinstance(s, str):
            if s == "log":
                pts = np.geomspace(1, max(total, 1), self.num) if total > 0 else np.zeros(0)
                pts = np.concatenate([[0], np.round(pts), [total]])
            elif s == "all":
                pts = np.arange(total + 1)
            elif s == "last":
                pts = np.array([total])
            else:
                v.fail("Record.steps", "'log', 'all', 'last', an int or a sequence", repr(s))
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            pts = np.arange(0, total + 1, v.positive_int("Record.steps", s))
            pts = np.append(pts, total)
        else:
            pts = np.asarray(s) if len(s) else np.zeros(0, dtype=np.int64)
            if pts.ndim != 1 or pts.dtype.kind not in "iu" or (pts.size and (pts.min() < 0 or pts.max() > total)):
                v.fail("Record.steps", f"integer steps in [0, {total}]", repr(s))
        return np.unique(pts.astype(np.int64))


class Run:
    """The result of :func:`train`.

    Attributes
    ----------
    steps : (R,) int64, recorded global step counts (updates done since the start of the run)
    loss, accuracy, sharpness : (R,) or None
    margins : (R, N) or None
    W_history : (R, d, d) or None
    W : (d, d), the memory after the last update (a dual run rebuilds it on first access)
    Z, A, c : the dual state of a dual run (scores N x M and coefficients N x M, or with LayerNorm
        read-outs E W and coefficients N x d; c the scale of W0), else None
    V : (d, M), W U^T of a projected run (which keeps no W), else None
    state : TrainState to save, or to continue the run from (``fm.train(..., resume=run.state)``);
        None for a projected run
    status : "ok" or "diverged" (a non-finite loss stopped the run; records before it stay);
        "interrupted" only on the ``run`` attribute of the KeyboardInterrupt that Ctrl-C raises
        in a compiled run (its records so far, and W for a primal run; no state)
    steps_done : int, updates done
    representation : "primal", "dual" or "projected", and representation_reason: why
    """

    def __init__(self, memory, task, steps, records, W, status, steps_done, backend, optimizer,
                 representation="primal", representation_reason="", dual_state=None, state=None, V=None):
        self.steps = steps
        self.loss = records.get("loss")
        self.accuracy = records.get("accuracy")
        self.margins = records.get("margins")
        self.sharpness = records.get("sharpness")
        self.W_history = records.get("W")
        self._W = W
        self.Z, self.A, self.c = dual_state if dual_state is not None else (None, None, None)
        self.V = V
        self.state = state
        self.status = status
        self.steps_done = steps_done
        self.backend = backend
        self.optimizer = optimizer
        self.representation = representation
        self.representation_reason = representation_reason
        self._memory, self._task = memory, task

    @property
    def W(self):
        if self.representation == "projected":
            raise InvalidArgumentError("run.W: a 'projected' run keeps V = W U^T (run.V), not W; train with "
                                       "representation='primal' to get W")
        if self._W is None and self.A is None:
            raise InvalidArgumentError(f"run.W: this {self.status} {self.representation} run keeps its records only")
        if self._W is None:  # dual run: W = c W0 - E^T A U, built once on request
            m = self._memory
            E, oc, os_, U, _, _ = problem_args(m, self._task)
            self._W = np.empty_like(m.W)
            get(self.backend).dual_rebuild_W(E, oc, os_, None if m.layernorm else U, m.W, self.A, self.c, self._W)
        return self._W

    @property
    def memory(self):
        """An AssociativeMemory with the trained W."""
        return self._memory.with_W(self.W)

    def to_xarray(self):
        """An xarray.Dataset of the recorded metrics over dimension ``step`` (needs xarray)."""
        import xarray as xr

        data = {}
        for name in ("loss", "accuracy", "sharpness"):
            if getattr(self, name) is not None:
                data[name] = ("step", getattr(self, name))
        if self.margins is not None:
            data["margins"] = (("step", "token"), self.margins)
        if self.W_history is not None:
            data["W"] = (("step", "row", "col"), self.W_history)
        return xr.Dataset(data, coords={"step": self.steps},
                          attrs={"status": self.status, "steps_done": self.steps_done, "backend": self.backend,
                                 "optimizer": repr(self.optimizer), "representation": self.representation})

    def __repr__(self):
        last = f", loss={self.loss[-1]:.4g}" if self.loss is not None and len(self.loss) else ""
        return f"Run(status={self.status!r}, steps_done={self.steps_done}{last})"


def train(memory, task, optimizer, steps, batch_size=None, seed=None, tokens=None, record=None, backend=None,
          chunk=None, start_step=0, power_iters=100, representation="auto", resume=None, callback=None,
          callback_every=1):
    """Train ``memory`` on ``task`` for ``steps`` updates in one backend call.

    Parameters
    ----------
    memory : AssociativeMemory (not modified; the result holds the new W)
    task : Task with the same N and M
    optimizer : SGD, Adam or SignGD
    steps : int >= 0
    batch_size : None for full-batch GD on the population loss, else minibatches of
        this many tokens drawn from p with replacement (duplicates are merged).
    seed : int, the sampling stream (see :func:`fastmem.kernels.sample_tokens`); default 0
    tokens : optional (steps, batch_size) int array of the minibatches to use instead
    record : Record (default: loss and accuracy at ~100 log-spaced steps)
    start_step : global index of the first step (schedules and the sampling stream)
    representation : "auto", "primal" (update W), "dual" (update the N x M scores, or the
        N x d read-outs with LayerNorm; exact for SGD-family optimizers) or "projected" (update
        V = W U^T, d x M; exact for Adam with betas (0, 0) and SignGD without LayerNorm; keeps
        no W). See :mod:`fastmem.memory.representations`
    resume : a TrainState (``run.state``) to continue from, with the same memory, task and
        optimizer: its representation, seed and step are used; the result equals one longer run
    callback : called as ``callback(step, state)`` every ``callback_every`` steps with the
        TrainState of a primal run (after the records of that step); it may modify
        ``state.W`` in place, and training continues from it (e.g. fm.cmd.EmbeddedCMD)

    Returns
    -------
    Run
    """
    if callback is not None:
        return _train_with_callback(memory, task, optimizer, steps, batch_size, seed, tokens, record, backend,
                                    chunk, start_step, power_iters, representation, resume, callback,
                                    callback_every)
    if not isinstance(memory, AssociativeMemory):
        v.fail("memory", "an AssociativeMemory", type(memory).__name__)
    E, oc, os_, U, p, y = problem_args(memory, task)
    v.finite("memory.W", memory.W)  # W is the caller's to change; E and U are read-only copies
    opt = spec_of(optimizer)  # the one conversion of the optimizer: everything below reads the spec
    for name in ("lr", "weight_decay", "eps"):  # as the kernel sees them, in the memory's dtype
        v.in_precision(f"optimizer.{name}", getattr(opt, name), memory.dtype)
    steps = v.positive_int("steps", steps, allow_zero=True, below=2**63)  # int64 step counts
    start_step = v.positive_int("start_step", start_step, allow_zero=True)
    if resume is not None:
        if not isinstance(resume, TrainState):
            v.fail("resume", "a TrainState (run.state or TrainState.load(path))", type(resume).__name__)
        resume.validate("resume")
        if resume.optimizer != optimizer_kind(opt):
            v.fail("resume", f"a state of {optimizer_kind(opt)} (the optimizer given)", f"a state of {resume.optimizer}")
        if seed is not None and seed != resume.seed:
            v.fail("seed", f"{resume.seed} (the seed of the run being resumed) or None", seed)
        if representation not in ("auto", resume.representation):
            v.fail("representation", f"'{resume.representation}' (that of the state) or 'auto'", repr(representation))
        seed, start_step, representation = resume.seed, resume.step, resume.representation
    seed = v.positive_int("seed", 0 if seed is None else seed, allow_zero=True, below=2**64)
    start_step = v.positive_int("start_step", start_step, allow_zero=True, below=2**63 - steps)  # int64 step counts
    if tokens is not None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != steps:
            v.fail("tokens", f"shape ({steps}, batch_size)", f"shape {tokens.shape}")
        if batch_size is not None and tokens.shape[1] != batch_size:
            v.fail("batch_size", f"{tokens.shape[1]} (the width of tokens)", batch_size)
        batch_size = tokens.shape[1]
        tokens = v.tokens("tokens", tokens, memory.N)
    b = 0 if batch_size is None else v.positive_int("batch_size", batch_size)
    record = Record() if record is None else record
    if not isinstance(record, Record):
        v.fail("record", "an fm.Record", repr(record))
    if "sharpness" in record.metrics and memory.layernorm:
        raise NotImplementedError("sharpness: the Hessian-vector product is implemented without LayerNorm")

    rec_steps = record.resolve(steps)
    R, N, d, dt = len(rec_steps), memory.N, memory.d, memory.dtype
    shapes = {"loss": (R,), "accuracy": (R,), "sharpness": (R,), "margins": (R, N), "W": (R, d, d)}
    rec = RecordSpec(rec_steps, **{name: (np.full(shape, np.nan, dtype=dt) if name in record.metrics else None)
                                   for name, shape in shapes.items()})
    tp = TrainSpec(steps, b, seed, start_step, memory.layernorm, chunk_arg(chunk),
                   v.positive_int("power_iters", power_iters))
    be = get(backend)
    rep, reason = representations.choose(memory, task, opt, steps, None if b == 0 else b, representation)
    call = representations.Call(memory, task, (E, oc, os_, U, p, y), opt, tp, rec, tokens, record, resume)
    policy = representations.POLICIES[rep]
    arrays = policy.buffers(call)
    try:
        out = policy.run(be, call, arrays)
    except KeyboardInterrupt as exc:  # Ctrl-C in the compiled loop: what it recorded stays reachable
        done, n_rec, *more = getattr(exc, "fastmem_progress", (None, None))
        if done is not None:  # the buffers are those after `done` steps: resumable as they are
            c = float(more[0]) if rep == "dual" else 1.0  # the dual run's scale of W0 comes with the progress
            t_opt = (resume.opt_t if resume is not None else 0) + (int(done) if arrays.get("m") is not None else 0)
            state = TrainState(rep, start_step + int(done), seed, {k: a for k, a in arrays.items() if a is not None},
                               c, t_opt, optimizer_kind(opt)) if policy.resumable else None
            dual_state = (arrays["Z"], arrays["A"], c) if rep == "dual" else None
            exc.run = Run(memory, task, start_step + rec_steps[:n_rec], _written(rec, n_rec), arrays.get("W"),
                          "interrupted", int(done), be.name, optimizer, rep, reason, dual_state, state, arrays.get("V"))
        raise
    state = None if not policy.resumable else TrainState(  # a projected run keeps no W to resume from
        rep, start_step + int(out.steps_done), seed, {k: a for k, a in arrays.items() if a is not None},
        float(out.c), int(out.opt_t), optimizer_kind(opt))
    return Run(memory, task, start_step + rec_steps[:out.records], _written(rec, out.records), arrays.get("W"),
               "ok" if out.status == 0 else "diverged", int(out.steps_done), be.name, optimizer, rep, reason,
               out.dual_state, state, arrays.get("V"))


def _written(rec, n):
    """The first n records of each metric recorded."""
    return {name: arr[:n] for name, arr in rec._asdict().items() if name != "at" and arr is not None}


def _train_with_callback(memory, task, optimizer, steps, batch_size, seed, tokens, record, backend, chunk,
                         start_step, power_iters, representation, resume, callback, every):
    """train() in chunks of ``every`` steps, resuming bit-exactly, with the callback between them."""
    if not callable(callback):
        v.fail("callback", "a callable(step, state)", repr(callback))
    every = v.positive_int("callback_every", every)
    steps = v.positive_int("steps", steps, allow_zero=True, below=2**63)  # int64 step counts
    if representation in ("dual", "projected"):
        v.fail("representation", "'primal' or 'auto' with a callback (it works on W)", repr(representation))
    record = Record() if record is None else record
    wanted = record.resolve(steps)
    kw = dict(batch_size=batch_size, backend=backend, chunk=chunk, power_iters=power_iters,
              representation="primal")
    state, done, parts = resume, 0, []
    while True:
        n = min(every, steps - done)
        local = wanted[(wanted > done) & (wanted <= done + n)] - done
        if done == 0:
            local = np.concatenate([wanted[wanted == 0], local])
        toks = None if tokens is None else np.asarray(tokens)[done:done + n]
        run = train(memory, task, optimizer, n, seed=seed if state is None else None, tokens=toks,
                    record=Record(steps=local, metrics=record.metrics), start_step=start_step, resume=state, **kw)
        parts.append(run)
        state, done = run.state, done + run.steps_done
        if run.status != "ok" or done >= steps:
            break
        callback(state.step, state)
    records = {name: np.concatenate([getattr(r, attr) for r in parts])
               for name, attr in (("loss", "loss"), ("accuracy", "accuracy"), ("margins", "margins"),
                                  ("sharpness", "sharpness"), ("W", "W_history"))
               if getattr(parts[0], attr) is not None}
    last = parts[-1]
    return Run(memory, task, np.concatenate([r.steps for r in parts]), records, last.W, last.status,
               done, last.backend, optimizer, "primal", "a callback works on W", None, last.state)
