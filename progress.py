"""Progress lines with an ETA, including from inside a jitted computation, and where a run is.

A long computation on the device (the adaptive ODE solve of one batch, the N steps of a PC
sampler, the time chunks of the ScoreFlow bound) says how far it is from inside the
compiled program: :func:`report` (traced code) hands a scalar fraction in [0, 1] to the
host through one ``jax.debug.callback``, and :func:`report_slowest` does the same for a
value that is batched under ``jax.vmap`` (the least advanced example's). The callback only
reads that scalar: the numbers computed do not change, and without an active task on the
host it returns at once.

On the host a :class:`Task` (an evaluation pass, sampling rounds) counts finished units
(examples, samples) and, while one part (a batch, a round) is being computed
(:meth:`Task.part`), takes the device's fractions of that part. It logs a line with the
ETA at most every ``every_s`` seconds (:data:`EVERY_S`), after a part when due, and at the
end, so a batch of several minutes still shows its progress every ≈ 30 s.

:func:`set_where` / :func:`where` keep a short description of the run's current position
(``training step 340/2000``, ``ckpt 2 bits/dim …, 64/197 examples``) for the one line of
an interrupted run (``main.py``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator, Optional

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from absl import logging

EVERY_S = 30.0  # seconds between two progress lines of a task

_lock = threading.Lock()
_active: Optional[Task] = None
_where = ''


# --------------------------------------------------------------------------- device side
def report(fraction) -> None:
    """From traced code: the running computation is ``fraction`` (an unbatched scalar in
    [0, 1]) done. One host callback; results are unaffected."""
    jax.debug.callback(_on_fraction, jnp.asarray(fraction, jnp.float32))


def report_slowest(fraction) -> None:
    """:func:`report` of a value batched under ``jax.vmap`` (e.g. each example's position in
    its own adaptive ODE solve): the smallest over the batch, as one scalar."""
    report(-eqxi.unvmap_max(-jnp.asarray(fraction, jnp.float32)))


def _on_fraction(fraction) -> None:
    task = _active
    if task is not None:
        task.fraction(float(fraction))


# --------------------------------------------------------------------------- where
def set_where(text: str) -> None:
    """Records the run's current position (for the line of an interrupted run)."""
    global _where
    _where = text


def where() -> str:
    """The run's last recorded position ('' before any)."""
    return _where


# --------------------------------------------------------------------------- host side
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes} min {seconds:02d} s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours} h {minutes:02d} min'


class Task:
    """Logged progress of ``total`` units (examples, samples) computed in parts.

    Args:
      what: the name in the lines (e.g. ``ckpt 2 bits/dim (probability-flow ODE)``).
      total: units in all.
      unit: their name.
      every_s: seconds between lines (default :data:`EVERY_S`).
    """

    def __init__(
        self, what: str, total: int, unit: str = 'examples', every_s: Optional[float] = None
    ):
        self.what, self.total, self.unit = what, int(total), unit
        self.every_s = EVERY_S if every_s is None else float(every_s)
        self.start = self.last = time.time()
        self.done = self.computed = 0
        self._part = 0  # units of the part being computed
        self._fraction = 0.0  # how far the device is through it
        set_where(self._position())

    # --- parts ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def part(self, size: int) -> Iterator[None]:
        """While inside, ``size`` units are being computed and the device's reports
        (:func:`report`) are fractions of them."""
        global _active
        with _lock:
            self._part, self._fraction = int(size), 0.0
            _active = self
        set_where(self._position())
        try:
            yield
        finally:
            with _lock:
                _active = None
                self._part, self._fraction = 0, 0.0

    def fraction(self, value: float) -> None:
        """The device is ``value`` of the way through the current part (logs when due)."""
        self._fraction = min(max(value, 0.0), 1.0)
        now = time.time()
        if now - self.last >= self.every_s:
            self._log(now)

    def advance(self, num: int, computed: bool = True, extra: str = '') -> None:
        """``num`` units finished (``computed``: now, else loaded from a file); logs when a
        line is due or at the end. ``extra`` is added to the line (e.g. a running mean)."""
        self.done += int(num)
        self.computed += int(num) if computed else 0
        set_where(self._position())
        now = time.time()
        if now - self.last >= self.every_s or self.done >= self.total:
            self._log(now, extra)

    # --- lines ----------------------------------------------------------------------------
    def _position(self) -> str:
        return f'{self.what}, {self.done}/{self.total} {self.unit}'

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at the rate so far (the current part counted by its fraction);
        None before 1 % of the work was computed (too early to tell)."""
        now = time.time() if now is None else now
        in_part = self._fraction * self._part
        progressed = self.computed + in_part
        if progressed <= 0.01 * self.total:
            return None
        rate = progressed / max(now - self.start, 1e-9)
        return max(self.total - self.done - in_part, 0.0) / rate

    def _log(self, now: float, extra: str = '') -> None:
        self.last = now
        part = ''
        if self._part:
            part = f', {self._part} more under way ({100.0 * self._fraction:.0f}% through)'
        eta = self.eta(now)
        logging.info(
            '%s: %d/%d %s (%.0f%%)%s%s, %s elapsed, ETA %s',
            self.what,
            self.done,
            self.total,
            self.unit,
            100.0 * self.done / max(self.total, 1),
            extra,
            part,
            _duration(now - self.start),
            'unknown yet' if eta is None else _duration(eta),
        )
