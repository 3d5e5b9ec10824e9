"""What stops a training run early: a stop request (Ctrl-C, SIGTERM), a loss term that is no longer
finite, and the processes' agreement on both (under a process group every rank stops at the same step);
and a GPU that runs out of memory, said in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from raw2rgb.errors import Interrupted
from raw2rgb.model import distributed, run
from raw2rgb.model.distributed import Dist
from raw2rgb.model.recipe import TrainError

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # why an epoch stopped early: a signal, on this or another rank
AGREE_EVERY = 8  # steps between the ranks' stop agreements (each one waits for the GPU)


# -- stop requests ----------------------------------------------------------------------------------

def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the training process, which finishes its step
    and saves: a scheduler's SIGTERM reaches the whole process group, and a worker that died of it
    would end the run without its checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """Ctrl-C / SIGTERM: finish the step in hand, save, stop (again: stop at once). Only the process
    that installed it acts: DataLoader workers get the terminal's Ctrl-C too."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def agreed(self, dist: Dist, device: torch.device, step: int, last_batch: bool) -> bool:
        """Whether to stop after this step, decided by all ranks together: under a process group
        every AGREE_EVERY steps and at the epoch's last batch, since agreeing waits for the GPU."""
        if not dist.grouped:
            return self.requested
        if last_batch or step % AGREE_EVERY == 0:
            return distributed.agree(self.requested, dist, device)
        return False

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return
        if self.requested:
            raise Interrupted(signum)  # the CLI exits 128 + this signal
        self.signal = signum
        log.warning("stopping after this step (again to stop at once)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- out of memory ----------------------------------------------------------------------------------

@contextlib.contextmanager
def out_of_memory(batch_size: int, device: torch.device) -> Iterator[None]:
    """A step that runs out of GPU memory ends the run with what to lower, not a CUDA traceback.

    Raises:
        TrainError: naming the batch size and the device.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainError(f"out of GPU memory at batch size {batch_size} on {device}; lower --batch-size (or use "
                         "--crop for smaller patches)") from None


# -- NaN tracking -----------------------------------------------------------------------------------

class FiniteTerms:
    """Which loss terms have ever been NaN or infinite: noted each step without a GPU sync, checked
    (on all ranks together) before anything is logged or saved, so that every checkpoint is a good one."""

    def __init__(self, run_dir: Path, dist: Dist, device: torch.device) -> None:
        self.run_dir, self.dist, self.device = run_dir, dist, device
        self.names: list[str] = []
        self.bad = torch.zeros(0, dtype=torch.bool)  # per term: ever not finite

    def note(self, terms: dict[str, torch.Tensor], step: int) -> None:
        names = list(terms)
        if names != self.names:
            self.check(step)
            self.names = names
            self.bad = torch.zeros(len(names), dtype=torch.bool, device=self.device)
        self.bad |= ~torch.isfinite(torch.stack(list(terms.values())))

    def check(self, step: int) -> None:
        """Stop when a term became NaN or infinite on any rank (decided together).

        Raises:
            TrainError: naming the terms, the step and the last good checkpoint.
        """
        if not self.names:
            return
        bad = distributed.any_rank(self.bad, self.dist)
        if bool(bad.any()):
            names = [n for n, b in zip(self.names, bad.tolist()) if b and n != "total"]
            latest = run.checkpoint(self.run_dir)  # every checkpoint is saved after this check: a good one
            kept = f"the last good checkpoint ({latest}) is kept" if latest.is_file() else \
                "no checkpoint had been written yet"
            raise TrainError(f"loss {', '.join(names) or 'total'} became NaN or infinite by step {step}; "
                             f"stopped, {kept}. Lower the learning rates or check the data")
