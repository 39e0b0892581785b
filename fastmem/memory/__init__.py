"""The associative memory (docs/model.md): tasks, embeddings, the model and its representations
(primal, dual, projected; the learnable and exponential models), training, metrics and saved
state. Its public names are fastmem's own (fm.train, fm.Task, fm.AssociativeMemory, ...)."""

from . import dual, embeddings, kernels, models
from .many import ManyRuns, train_many
from .metrics import accuracy, evaluate, gradient, loss, margins, population_metrics, sharpness
from .model import AssociativeMemory
from .optim import SGD, Adam, Constant, Cosine, SignGD, StepDecay
from .state import TrainState
from .step import sgd_step, step
from .task import Task
from .train import Record, Run, train
