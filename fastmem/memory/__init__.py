"""The associative memory (docs/model.md): tasks, embeddings, the model and its representations
(primal, dual, projected; the learnable and exponential models), training, metrics and saved
state. Its public names are fastmem's own (fm.train, fm.Task, fm.AssociativeMemory, ...)."""

from ..backends import register as _register

# The memory's kernels, {name: parameters}: each of this package's backend modules (_reference,
# _numba, _cpp, _cuda) implements them with exactly these parameters; the device kernels also run
# on CUDA arrays.
_register(__name__, {
    "softmax_xent_grad": ("q", "u", "y", "w", "h", "lse", "zy", "zother", "chunk"),
    "sgd_rank_update": ("W", "Eb", "H", "alpha"),
    "sample_tokens": ("cdf", "seed", "start_step", "out"),
    "normal_fill": ("seed", "scale", "out"),
    "population_metrics": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "layernorm", "chunk",
                           "margins", "grad"),
    "sharpness": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "chunk", "iters", "tol", "seed"),
    "train": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
              "m", "v", "t0"),
    "train_dual": ("E", "onehot_col", "onehot_scale", "U", "W0", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
                   "Z", "A", "mA", "mZ", "c", "fresh"),
    "sgd_step": ("W", "E", "onehot_col", "onehot_scale", "U", "x", "y", "lr", "layernorm", "out"),
    "train_model": ("kind", "E", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec"),
    "dual_rebuild_W": ("E", "onehot_col", "onehot_scale", "U", "W0", "A", "c", "W_out"),
    "train_many": ("E", "U", "W", "p", "y", "lr", "steps", "loss", "accuracy", "status"),
    "train_projected": ("E", "U", "V", "p", "y", "cdf", "tokens", "opt", "tp", "rec"),
}, device=("softmax_xent_grad", "sgd_rank_update", "sample_tokens", "sgd_step", "train_many"))

from . import embeddings, kernels, models, representations
from .many import ManyRuns, train_many
from .metrics import accuracy, evaluate, gradient, loss, margins, population_metrics, sharpness
from .associative_memory import AssociativeMemory
from .optim import SGD, Adam, Constant, Cosine, SignGD, StepDecay
from .state import TrainState
from .step import sgd_step, step
from .task import Task
from .train import Record, Run, train
from . import experiments  # registers the sweep experiment "scaling-law"
