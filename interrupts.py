"""One Ctrl-C (SIGINT) or SIGTERM ends a run at once, with one line and no traceback.

Python runs its signal handlers only between bytecodes of the main thread, so a run blocked
in a long XLA computation (a batch of ODE solves takes minutes) would see a Ctrl-C only
when it returns, and then as a ``KeyboardInterrupt`` with a traceback, possibly swallowed
by a finalizer (then the run goes on). :func:`install` instead lets the C-level handler
wake a watcher thread (``signal.set_wakeup_fd``), which prints

    Interrupted (SIGINT) at <where the run is>; rerun the same command to continue.

and ends the process with ``os._exit`` (status 128 + the signal's number: 130 for SIGINT,
143 for SIGTERM), within a second whatever the main thread is doing. Everything a run
saves is written atomically (a temporary file or folder, then a rename), so ending it at
any moment loses at most the work since its last save, as a preemption does, and the same
command continues from there.

Standard library only: ``main.py`` installs it before its slow imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_installed = False
_where: Callable[[], str] = lambda: ''
_log: Optional[Callable[[str], None]] = None


def install() -> None:
    """Routes SIGINT and SIGTERM to the watcher (main thread only; idempotent)."""
    global _installed
    if _installed:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in SIGNALS:
        signal.signal(signum, _ignore_in_main_thread)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), name='interrupts', daemon=True).start()
    _installed = True


def describe_position_with(where: Callable[[], str]) -> None:
    """``where()`` says where the run is (e.g. ``progress.where``) in the line."""
    global _where
    _where = where


def log_with(log: Callable[[str], None]) -> None:
    """``log(line)`` also records the line (e.g. in ``W/stdout.txt``)."""
    global _log
    _log = log


def message(signum: int) -> str:
    """The one line of an interrupted run."""
    try:
        position = _where() or 'the start (nothing computed yet)'
    except Exception:  # a position that cannot be read must not hide the line
        position = 'an unknown point'
    name = signal.Signals(signum).name
    return f'Interrupted ({name}) at {position}; rerun the same command to continue.'


def _ignore_in_main_thread(signum, frame) -> None:
    """The Python-level handler: nothing (the watcher acts; no KeyboardInterrupt)."""


def _watch(read_fd: int) -> None:
    while True:
        data = os.read(read_fd, 1)
        if not data:
            return
        if data[0] in SIGNALS:
            _stop(data[0])


def _stop(signum: int) -> None:
    line = message(signum)
    print(line, file=sys.stderr, flush=True)
    if _log is not None:
        try:
            _log(line)
        except Exception:  # the log file may be on a full disk: the console has the line
            pass
    os._exit(128 + signum)
