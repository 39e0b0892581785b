"""Optimizers and learning-rate schedules.

Full-batch gradient descent on the population loss is ``SGD`` with ``batch_size=None``
in :func:`fastmem.train`. Weight decay is decoupled for every optimizer:
W <- (1 - lr_t * weight_decay) W - lr_t * update.
"""

from dataclasses import dataclass, field

from .. import _validate as v
from ..specs import OptimizerKind, OptimizerSpec, ScheduleKind


@dataclass(frozen=True)
class Constant:
    """lr_t = lr."""

    def _params(self):
        return ScheduleKind.CONSTANT, 0, 1.0, 0.0  # schedule, schedule_steps, gamma, min_lr


@dataclass(frozen=True)
class Cosine:
    """lr_t = min_lr + (lr - min_lr) (1 + cos(pi min(t / steps, 1))) / 2."""

    steps: int
    min_lr: float = 0.0

    def __post_init__(self):
        v.positive_int("Cosine.steps", self.steps)
        v.positive_float("Cosine.min_lr", self.min_lr, allow_zero=True)

    def _params(self):
        return ScheduleKind.COSINE, self.steps, 1.0, float(self.min_lr)


@dataclass(frozen=True)
class StepDecay:
    """lr_t = lr * gamma ** (t // every)."""

    every: int
    gamma: float = 0.1

    def __post_init__(self):
        v.positive_int("StepDecay.every", self.every)
        v.positive_float("StepDecay.gamma", self.gamma)

    def _params(self):
        return ScheduleKind.STEP, self.every, float(self.gamma), 0.0


def _schedule(s):
    if isinstance(s, str):
        if s != "constant":
            v.fail("schedule", "'constant' or a Constant/Cosine/StepDecay object", repr(s))
        return Constant()
    if not isinstance(s, (Constant, Cosine, StepDecay)):
        v.fail("schedule", "a Constant, Cosine or StepDecay object", repr(s))
    return s


@dataclass(frozen=True)
class SGD:
    """W <- W - lr_t * buf, buf = momentum * buf + grad (buf = grad without momentum)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: object = field(default_factory=Constant)

    linear = True  # the update is linear in the gradient (the dual engine's condition)

    def __post_init__(self):
        v.positive_float("lr", self.lr)
        v.unit_interval("momentum", self.momentum)
        v.positive_float("weight_decay", self.weight_decay, allow_zero=True)
        object.__setattr__(self, "schedule", _schedule(self.schedule))

    def _params(self):
        return _pack(OptimizerKind.SGD, self, momentum=self.momentum)


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction; betas=(0, 0) gives the normalised, sign-like update of the sweeps."""

    lr: float
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: object = field(default_factory=Constant)

    linear = False

    def __post_init__(self):
        v.positive_float("lr", self.lr)
        if len(self.betas) != 2:
            v.fail("betas", "a pair (beta1, beta2)", repr(self.betas))
        v.unit_interval("betas[0]", self.betas[0])
        v.unit_interval("betas[1]", self.betas[1])
        v.positive_float("eps", self.eps)
        v.positive_float("weight_decay", self.weight_decay, allow_zero=True)
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        object.__setattr__(self, "schedule", _schedule(self.schedule))

    def _params(self):
        return _pack(OptimizerKind.ADAM, self, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps)


@dataclass(frozen=True)
class SignGD:
    """Sign descent: W <- W - lr_t * sign(grad)."""

    lr: float
    weight_decay: float = 0.0
    schedule: object = field(default_factory=Constant)

    linear = False

    def __post_init__(self):
        v.positive_float("lr", self.lr)
        v.positive_float("weight_decay", self.weight_decay, allow_zero=True)
        object.__setattr__(self, "schedule", _schedule(self.schedule))

    def _params(self):
        return _pack(OptimizerKind.SIGN, self)


def _pack(kind, opt, momentum=0.0, beta1=0.0, beta2=0.0, eps=1e-8):
    return OptimizerSpec(kind, float(opt.lr), float(momentum), float(opt.weight_decay), float(beta1), float(beta2),
                         float(eps), *opt.schedule._params())


def spec_of(optimizer, name="optimizer"):
    """The OptimizerSpec of fm.SGD, fm.Adam or fm.SignGD, what the backends read; made once per
    call at the API's boundary and passed on (a spec is returned as it is)."""
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if not isinstance(optimizer, (SGD, Adam, SignGD)):
        v.fail(name, "fm.SGD, fm.Adam or fm.SignGD", repr(optimizer))
    return optimizer._params()


def describe(spec):
    """An optimizer's spec as its user wrote it, for messages: SGD(momentum=0.9), Adam(betas=(0.0, 0.0)), SignGD()."""
    if spec.kind == OptimizerKind.SGD:
        return f"SGD(momentum={spec.momentum})" if spec.momentum else "SGD()"
    if spec.kind == OptimizerKind.ADAM:
        return f"Adam(betas=({spec.beta1}, {spec.beta2}))"
    return "SignGD()"


def make(name, lr, **kw):
    """An optimizer by name: 'sgd' (also 'gd'), 'adam' or 'sign'."""
    cls = {"sgd": SGD, "gd": SGD, "adam": Adam, "sign": SignGD}.get(name)
    if cls is None:
        v.fail("optimizer", "one of 'sgd', 'gd', 'adam', 'sign'", repr(name))
    return cls(lr=lr, **kw)
