"""Make Ctrl-C stop the test run within seconds, even inside compiled code.

Python raises ``KeyboardInterrupt`` only when the main thread next runs
bytecode. A test waiting on an XLA compile or a long compiled call (tens of
seconds on a loaded machine) sits in C++ all that time, so pytest seemed to
ignore Ctrl-C. The C-level signal handler still runs at once and writes the
signal number to the wakeup file descriptor; a daemon thread reads it, gives
the normal ``KeyboardInterrupt`` path (pytest's summary, fixture teardown)
``GRACE_S`` seconds, and otherwise ends the process with pytest's
"interrupted" exit status (2).

Loaded by ``tests/conftest.py``; tested in ``tests/test_interrupt.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_S = 3.0
EXIT_INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED
_BEFORE_EXIT = []  # callbacks for the forced exit, which skips atexit handlers (os._exit)


def before_forced_exit(callback) -> None:
    """Run ``callback()`` just before the watcher ends the process (e.g. to kill subprocesses)."""
    _BEFORE_EXIT.append(callback)


def _watch(read_fd: int, grace_s: float, config) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT in data:
            break
    time.sleep(grace_s)  # the normal path ends the process (this daemon thread with it) first
    capture = config.pluginmanager.getplugin("capturemanager") if config is not None else None
    if capture is not None:  # pytest redirects fd 2 into a file that os._exit would lose
        try:
            capture.suspend_global_capture(in_=False)
        except Exception:  # racing the main thread; the exit matters more than the message
            pass
    sys.stderr.write(
        f"\ninterrupted: the main thread is busy in compiled code; exiting after {grace_s:g} s\n")
    sys.stderr.flush()
    for callback in _BEFORE_EXIT:
        try:
            callback()
        except Exception:  # one failed cleanup must not keep the process alive
            pass
    os._exit(EXIT_INTERRUPTED)


def install(config=None, grace_s: float = GRACE_S) -> bool:
    """Start the watcher; False where it cannot work (not the main thread, or a wakeup fd in use)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:
        os.close(read_fd)
        os.close(write_fd)
        return False
    if previous != -1:  # someone else listens there: leave theirs in place
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return False
    threading.Thread(target=_watch, args=(read_fd, grace_s, config), name="prompt-interrupt",
                     daemon=True).start()
    return True
