"""Helper threads that leave Ctrl-C to the main thread.

The kernel gives a signal sent to a process to any of its threads that does
not block it. Python runs its handlers in the main thread only, and only when
that thread runs Python code: a SIGINT that lands on a helper thread while
the main thread waits in a blocking read (a runner's next line, ``input()``)
interrupts nothing until that read returns, which can be long (a model still
loading on a busy machine). A helper started here blocks SIGINT and SIGTERM,
so they always reach the main thread and interrupt its read at once.
"""

from __future__ import annotations

import signal
import threading

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start(thread: threading.Thread) -> threading.Thread:
    """Start ``thread`` with SIGINT and SIGTERM blocked in it (it inherits the mask of the
    thread that starts it; the starter's own mask is restored at once)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
