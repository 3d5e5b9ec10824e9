"""How far a training run is and how long it has left: the time estimate and the progress lines
that :class:`Pace` writes to the console and RUN/log.txt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PROGRESS_EVERY = 30.0  # seconds between progress lines on the console and in log.txt
ESTIMATE_AFTER = (3, 10.0)  # the run's time is estimated after this many steps and at least these seconds
LONG_RUN = 3600.0  # seconds: a run estimated longer than this is told how to be shorter


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class Pace:
    """How far a run is and how long it has left, from this process's own steps: one estimate once
    the first steps are timed (with how to make the run shorter when it passes an hour), then a
    progress line every :data:`PROGRESS_EVERY` seconds, on the console and in log.txt — a CPU run
    of an hour is never silent between its start and its end."""

    total: int  # steps of the whole run
    done: int  # steps done when this process started
    device: str
    preset: str
    first: int | None = None  # the step the timing starts at (after the first, which compiles and warms)
    t_first: float = 0.0
    last_line: float = field(default_factory=time.perf_counter)
    estimated: bool = False

    def rate(self, step: int) -> float | None:
        """Steps per second since the first timed step."""
        if self.first is None or step <= self.first:
            return None
        return (step - self.first) / max(1e-9, time.perf_counter() - self.t_first)

    def note(self, step: int, stage: int, epoch: int, epochs: int, per_step: int, loss: Any) -> None:
        """After step ``step`` (``per_step`` samples a step over every process; ``loss``: G's total, a
        tensor read only when a line is printed: no device sync a step)."""
        now = time.perf_counter()
        if self.first is None:
            self.first, self.t_first = step, now
            return
        rate = self.rate(step)
        left = (self.total - step) / rate if rate else float("nan")
        if not self.estimated and step - self.first >= ESTIMATE_AFTER[0] and now - self.t_first >= ESTIMATE_AFTER[1]:
            self.estimated = True
            log.info("estimated: %s for the %d steps left (%.2f steps/s on %s)", _duration(left), self.total - step,
                     rate, self.device)
            if left > LONG_RUN:
                hint = ("--preset tiny (a short one-stage schedule of a small network: minutes on a CPU)"
                        if self.preset != "tiny" else "fewer --epochs or smaller --crop")
                log.warning("this run would take about %s on %s: for a first try use %s, or train on a GPU "
                            "(docs/gpus.md); Ctrl-C stops it after a checkpoint, and rerunning continues it",
                            _duration(left), self.device, hint)
        if now - self.last_line >= PROGRESS_EVERY:
            self.last_line = now
            log.info("stage %d epoch %d/%d, step %d/%d: %.1f samples/s, loss %.4f, %s left", stage, epoch, epochs,
                     step, self.total, (rate or 0.0) * per_step, float(loss), _duration(left))
