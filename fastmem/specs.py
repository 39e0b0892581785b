"""What crosses from the Python API into every backend: typed specs with named fields (the C++
binding converts each once into its struct of csrc/include/fastmem/params.hpp; the numba and
numpy backends read the same fields), the kinds as named enums, and the constants every backend
shares (the C++ core's own are checked against these: tests/test_backends.py)."""

import enum
from typing import NamedTuple

import numpy as np

LAYERNORM_EPS = 1e-6  # LayerNorm of a read-out h: h / sqrt(|h|^2 + eps) (kernels/layernorm.hpp)
SHARPNESS_TOL = 1e-6  # relative tolerance of the power iteration behind recorded sharpness (train.hpp)


class OptimizerKind(enum.IntEnum):
    SGD = 0
    ADAM = 1
    SIGN = 2


class ScheduleKind(enum.IntEnum):
    CONSTANT = 0
    COSINE = 1
    STEP = 2


class ModelKind(enum.IntEnum):
    """The trainable models of fastmem.models (train_models.hpp)."""

    LEARNABLE = 1
    EXPONENTIAL = 2


class OptimizerSpec(NamedTuple):
    """An optimizer and its schedule (params.hpp: OptimizerParams, one for every system). The
    defaults are the header's (tests/test_specs.py holds each spec's fields and defaults to its
    struct's); kind and lr have none here: every spec names them."""

    kind: OptimizerKind
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: ScheduleKind = ScheduleKind.CONSTANT
    schedule_steps: int = 0
    gamma: float = 0.1
    min_lr: float = 0.0

    @property
    def normalized(self):
        """Adam with betas (0, 0): the stateless update g / (|g| + eps) (OptimizerParams::is_normalized_adam)."""
        return is_normalized_adam(self.kind, self.beta1, self.beta2)


def is_normalized_adam(kind, beta1, beta2):
    return kind == OptimizerKind.ADAM and beta1 == 0.0 and beta2 == 0.0


class TrainSpec(NamedTuple):
    """A training run (params.hpp: TrainParams): batch_size 0 is full-batch GD."""

    steps: int
    batch_size: int
    seed: int
    start_step: int = 0
    layernorm: bool = False
    chunk: int = 0
    power_iters: int = 100


class RecordSpec(NamedTuple):
    """Where a run records (train.hpp: TrainRecord): at the steps ``at`` (ascending), each array
    (or None) with one row per recorded step."""

    at: np.ndarray
    loss: object = None
    accuracy: object = None
    margins: object = None
    W: object = None
    sharpness: object = None


class ModelOptimizerSpec(NamedTuple):
    """The models' optimizer (train_models.hpp: ModelOptimizer): ``opt`` SGD, or Adam with betas
    (0, 0), at the rate of W and a constant schedule; E and U have a learning rate of their own."""

    opt: OptimizerSpec
    lr_E: float = 1.0
    lr_U: float = 1.0

    @property
    def normalized(self):
        return self.opt.normalized
