"""The arguments every backend kernel shares, built once from a memory and a task."""

from .. import _validate as v


def problem_args(memory, task):
    """(E, onehot_col, onehot_scale, U, p, y) after checking that memory and task agree."""
    if memory.N != task.N:
        v.fail("task", f"N = {memory.N} tokens (the rows of E)", f"N = {task.N}")
    if memory.M != task.M:
        v.fail("task", f"M = {memory.M} outputs (the rows of U)", f"M = {task.M}")
    cols, scales = memory.onehot if memory.onehot is not None else (None, None)
    return memory.E, cols, scales, memory.U, task.p, task.y


def chunk_arg(chunk):
    return 0 if chunk is None else v.positive_int("chunk", chunk)
