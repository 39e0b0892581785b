"""Ctrl-C held back to a safe point: for loops that must stop between two steps, and writes that
must happen whole (the compiled loops poll for it themselves, see interrupt.hpp)."""

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred_ctrl_c():
    """Inside the block, Ctrl-C sets the one-element list it yields instead of raising; the
    block decides where to stop, and raises KeyboardInterrupt itself. In the main thread under
    Python's own SIGINT handler only: elsewhere (a worker thread, a handler of the caller's)
    Ctrl-C is what it was, and the list stays False."""
    came = [False]
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield came
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.__setitem__(0, True))
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, previous)
