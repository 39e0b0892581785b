"""fastmem: fast simulation of gradient-descent training of associative memories.

>>> import fastmem as fm
>>> task = fm.Task.zipf(N=100, M=5, alpha=2.0)
>>> E, U = fm.embeddings.gaussian(N=100, M=5, d=100, seed=0)
>>> run = fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=1.0), steps=6400, batch_size=16)
"""

from . import cmd, memory, pathcond, scansnap, sweeps, transformer
from .backends import backends, get_num_threads, set_num_threads, use_backend
from .errors import BackendUnavailableError, CudaError, InvalidArgumentError, InvalidStateError, PerformanceWarning
from .memory import (SGD, Adam, AssociativeMemory, Constant, Cosine, ManyRuns, Record, Run, SignGD, StepDecay, Task,
                     TrainState, accuracy, embeddings, evaluate, gradient, kernels, loss, margins, models,
                     population_metrics, representations, sgd_step, sharpness, step, train, train_many)
from ._version import __version__
from .sweeps import load_sweep, sweep


def __getattr__(name):
    # fm.dual, 0.1.0's name of fm.representations (it chooses among all three), kept one release
    # with a warning as fm.step and fm.evaluate are
    if name == "dual":
        import warnings

        warnings.warn("fm.dual is now fm.representations", DeprecationWarning, stacklevel=2)
        return representations
    raise AttributeError(f"module 'fastmem' has no attribute {name!r}")



__all__ = [
    "Adam", "AssociativeMemory", "BackendUnavailableError", "Constant", "Cosine", "CudaError", "InvalidArgumentError", "InvalidStateError",
    "ManyRuns", "PerformanceWarning", "Record",
    "Run", "SGD", "SignGD", "StepDecay", "Task", "TrainState", "accuracy", "backends", "cmd", "embeddings",
    "evaluate", "get_num_threads", "gradient", "kernels", "load_sweep", "loss", "margins", "memory", "models",
    "pathcond", "population_metrics", "representations", "scansnap", "set_num_threads", "sgd_step", "sharpness", "step", "sweep",
    "sweeps", "train", "train_many", "transformer", "use_backend",
]
