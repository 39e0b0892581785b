"""The numba CPU backend: the kernels of csrc/include/fastmem as @njit loops (parallel over
rows where it pays), used when the compiled extension is missing or when asked for.

This module is the backend (its INFO) and the pieces its systems share, as the C++ core's
shared headers: the counter-based stream (rng.hpp), the schedules and optimizers (params.hpp,
optim.hpp) and the one training loop (drive() in train.hpp). Each system's kernels are in its
own package (fastmem/<system>/_numba.py), registered with fastmem.backends.
"""

import hashlib
import inspect
import math
import queue
import threading
import types
from pathlib import Path

import numba as nb
import numpy as np
from numba import njit

INFO = {"numba": nb.__version__, "threads": nb.get_num_threads()}


# --- the counter-based stream (rng.hpp) ----------------------------------------------

@njit(cache=True)
def splitmix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def draw_bits(key, counter):
    """rng.hpp's draw_bits: the 64 bits of draw `counter` of the stream `key`."""
    return splitmix64(key + counter * np.uint64(0x9E3779B97F4A7C15))


@njit(cache=True, inline="always")
def bounded_index(bits, n):
    """An index in [0, n) from the high 32 bits (bounded_index in the core)."""
    return np.int64(((bits >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@njit(cache=True, inline="always")
def alias_draw(bits, thresh, alias):
    """A Walker alias draw among len(thresh) slots: the slot from the high bits, slot or alias by
    the low bits (alias_draw in the core)."""
    k = bounded_index(bits, len(thresh))
    return k if (bits & np.uint64(0xFFFFFFFF)) < thresh[k] else alias[k]


@njit(cache=True)
def draw(cdf, key, counter):
    u = np.float64(splitmix64(key ^ splitmix64(np.uint64(counter))) >> np.uint64(11)) * 2.0**-53
    k = np.searchsorted(cdf, u, side="right")
    return min(k, len(cdf) - 1)



# --- schedules and optimizers (params.hpp, optim.hpp) ----------------------------------------

@njit(cache=True)
def lr_at(sched, lr, steps_, gamma, min_lr, t):
    if sched == 1:
        frac = min(t / steps_, 1.0) if steps_ > 0 else 0.0
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    if sched == 2:
        return lr * gamma ** (t // steps_ if steps_ > 0 else 0)
    return lr



@njit(cache=True)
def optimizer_step(kind, W, g, m, v, lr, decay, mom, b1, b2, eps, t):
    """optim.hpp's update of W from a dense gradient g, in place."""
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    for i in range(W.shape[0]):
        for k in range(W.shape[1]):
            gi = g[i, k]
            if kind == 0:
                if mom != 0.0:
                    m[i, k] = mom * m[i, k] + gi
                    gi = m[i, k]
                W[i, k] = decay * W[i, k] - lr * gi
            elif kind == 1:
                m[i, k] = b1 * m[i, k] + (1 - b1) * gi
                v[i, k] = b2 * v[i, k] + (1 - b2) * gi * gi
                W[i, k] = decay * W[i, k] - (lr / bc1) * m[i, k] / (math.sqrt(v[i, k]) / math.sqrt(bc2) + eps)
            else:
                W[i, k] = decay * W[i, k] - lr * (1.0 if gi > 0 else (-1.0 if gi < 0 else 0.0))



# --- the one loop (drive() in train.hpp) ---------------------------------------------------

def _drive_loop(steps, ctx, stop):
    """drive() in train.hpp: record at t, then take step t, until `steps`, divergence (status
    1) or stop[0] set (status 2: Ctrl-C, see interruptible). record(t, r, ctx) writes the
    records due at t from record r on and returns (next r, diverged); step(t, ctx) returns
    False when the loss turned non-finite."""
    r, status, done = 0, 0, 0
    for t in range(steps + 1):
        r, diverged = record(t, r, ctx)  # noqa: F821 (bound per representation by driver)
        done = t
        if diverged:
            status = 1
        if t == steps or status != 0:
            break
        if stop[0] != 0:
            status = 2
            break
        if not step(t, ctx):  # noqa: F821
            status = 1
            break
    return status, done, r


def _drive_batches_loop(steps, ctx, stop):
    """drive() for the memory's trainers (train.hpp): the loop walks the records due at t
    (due(t, r, ctx); record(t, r, ctx) writes record r and returns whether its loss is not
    finite), draws step t's batch and learning rate (batch(t, ctx) -> (tokens, weights, lr)) and
    hands them to step(t, tokens, weights, lr, ctx)."""
    r, status, done = 0, 0, 0
    for t in range(steps + 1):
        while due(t, r, ctx):  # noqa: F821 (bound per representation by driver)
            if record(t, r, ctx):  # noqa: F821
                status = 1
            r += 1
        done = t
        if t == steps or status != 0:
            break
        if stop[0] != 0:
            status = 2
            break
        toks, w, lr = batch(t, ctx)  # noqa: F821
        if not step(t, toks, w, lr, ctx):  # noqa: F821
            status = 1
            break
    return status, done, r


def driver(name, record, step, due=None, batch=None):
    """The one loop compiled for one representation, its functions bound as the loop's globals
    (and inlined into it: they take the whole context, which a call would pass by value):
    _drive_loop with record and step, or, given due and batch, _drive_batches_loop. numba cannot
    cache a function that takes another as an argument (a dynamic global) nor a closure over one
    (the cache key pickles the dispatcher with a per-process id), so each representation gets its
    own compiled copy of the loop's code."""
    loop = _drive_loop if batch is None else _drive_batches_loop
    bound = {"record": record, "step": step, "due": due, "batch": batch, "range": range, "__name__": __name__}
    # numba's cache checks the file of the loop's code (this one) only: a name that carries a
    # digest of the system's module too, so that a changed step is compiled, not loaded stale
    files = sorted({__file__} | {inspect.getfile(g.py_func) for g in (record, step, due, batch) if g is not None})
    digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in files)).hexdigest()[:12]
    f = types.FunctionType(loop.__code__, bound, f"_drive_{name}_{digest}")
    f.__qualname__ = f.__name__
    return njit(cache=True, nogil=True)(f)  # nogil: run by interruptible() beside the main thread


def serial_and_parallel(impl, **options):
    """Two builds of ``impl`` (a function with prange loops), without and with threads: for
    kernels that thread on large inputs only. Each is its own copy of the function, named
    apart: numba's cache keys a build by the function's name and line, not by its options, so
    two builds of one function load each other's code from the cache."""
    def build(suffix, parallel):
        f = types.FunctionType(impl.__code__, impl.__globals__, impl.__name__ + suffix, impl.__defaults__,
                               impl.__closure__)
        f.__qualname__ = impl.__qualname__ + suffix
        return njit(cache=True, parallel=parallel, **options)(f)

    return build("_serial", False), build("_parallel", True)


INTERRUPTED = 2  # the loops' status when stop[0] was set
_workers = threading.local()


class _Worker:
    """The calling thread's worker: kept between runs a moment apart, ended when idle. OpenMP
    gives each thread that launches parallel regions a team of its own: a new thread per run
    paid for a team at every launch of the run's kernels (15-30 us, against 1 us from a kept
    thread), while an idle team kept for good made the compiled core's parallel regions 3-5x
    slower (OpenMP throttles its waiting once more threads than processors are alive)."""

    IDLE_SECONDS = 0.1

    def __init__(self):
        self.lock, self.jobs, self.alive = threading.Lock(), queue.SimpleQueue(), False

    def put(self, job):
        with self.lock:
            self.jobs.put(job)
            if not self.alive:
                self.alive = True
                threading.Thread(target=self._serve, name="fastmem-numba", daemon=True).start()

    def _serve(self):
        while True:
            try:
                job = self.jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self.lock:
                    if self.jobs.empty():
                        self.alive = False
                        return
                continue
            job()


def _worker():
    if getattr(_workers, "worker", None) is None:
        _workers.worker = _Worker()
    return _workers.worker


def interruptible(f, *args, progress):
    """f(*args, stop) in the caller's worker thread, the caller waiting where Ctrl-C reaches it: a
    KeyboardInterrupt sets stop[0], the loop ends between two steps (status INTERRUPTED), and
    the interrupt is raised again carrying ``fastmem_progress = progress(result)`` (steps done,
    records written), as the compiled backend's does. f must be compiled nogil."""
    stop = np.zeros(1, np.uint8)
    box, finished = {}, threading.Event()
    threads = nb.get_num_threads()  # numba's thread count is the calling thread's own

    def work():
        try:
            nb.set_num_threads(threads)
            box["result"] = f(*args, stop)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc
        finally:
            finished.set()

    _worker().put(work)
    interrupt = None
    while not finished.is_set():  # an Event, not join(): an interrupted join can report a live thread dead
        try:
            finished.wait(0.05)
        except KeyboardInterrupt as exc:
            interrupt = interrupt or exc
            stop[0] = 1
    if "error" in box:
        raise box["error"]
    if interrupt is not None:
        interrupt.fastmem_progress = progress(box["result"])
        raise interrupt
    return box["result"]
