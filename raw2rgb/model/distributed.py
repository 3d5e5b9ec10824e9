"""Several training processes (torchrun, DDP): ranks, agreed decisions and the data order across ranks.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; raw2rgb then uses NCCL on GPUs and gloo on the
CPU. One process makes no process group, unless ``RAW2RGB_PROCESS_GROUP=1`` asks for one: then a
1-rank group and DDP run exactly as with several (NCCL start-up, the reducer, the agreed flags, the
barrier and the teardown), which is how one GPU rehearses a multi-GPU run. Every decision that
ends or changes the loop (a stop request, a NaN loss) is agreed across ranks before anyone acts
on it: a rank that stops alone leaves the others waiting in an all-reduce forever. At the end
every rank's weights are compared (:func:`compare_ranks`): DDP keeps them equal, or the run failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raw2rgb.errors import ConfigError
from raw2rgb.model.recipe import TrainError
from raw2rgb.model.run import Stats

FORCE_GROUP = "RAW2RGB_PROCESS_GROUP"  # "1": a process group (and DDP) even for a single process


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this run initialised the process group, and ends it
    grouped: bool = False  # a process group is in use: DDP, collectives (one process too, when forced)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return tdist.get_backend() if self.grouped else None

    def close(self) -> None:
        """End the process group this run started: a gloo/NCCL group left to the interpreter's exit
        can abort the process ("terminate called without an active exception")."""
        if self.owned:
            with contextlib.suppress(RuntimeError):  # a rank that failed leaves the others no barrier
                tdist.barrier()  # no rank tears the group down while another is still in a collective
            tdist.destroy_process_group()


def init(device: torch.device) -> Dist:
    """The process group torchrun asked for: none when WORLD_SIZE is 1 or unset, unless
    ``RAW2RGB_PROCESS_GROUP=1``.

    Raises:
        ConfigError: more processes on this machine than it has GPUs (two would share one GPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and os.environ.get(FORCE_GROUP, "") != "1":
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            local = os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1))
            raise ConfigError(f"{local} training processes on this machine but {gpus} GPU(s): process {local_rank} "
                              f"has no GPU of its own; start at most {gpus} (torchrun --nproc_per_node {gpus})")
    owned = not tdist.is_initialized()
    if owned:
        kwargs = {}
        if "MASTER_ADDR" not in os.environ:  # one process started without torchrun
            kwargs = {"init_method": f"tcp://127.0.0.1:{_free_port()}", "rank": 0, "world_size": 1}
        if device.type == "cuda":  # device_id: NCCL binds this process's GPU now, not at the first collective
            tdist.init_process_group("nccl", device_id=torch.device("cuda", local_rank), **kwargs)
        else:
            tdist.init_process_group("gloo", **kwargs)
    return Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, owned, grouped=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier(dist: Dist) -> None:
    if dist.grouped:
        tdist.barrier()


def any_rank(flags: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Element-wise OR of a boolean tensor over all ranks (the tensor itself with one process)."""
    if not dist.grouped:
        return flags
    t = flags.to(torch.int32)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t.bool()


def agree(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any."""
    if not dist.grouped:
        return flag
    return bool(any_rank(torch.tensor([flag], device=device), dist).item())


def gather(obj: object, dist: Dist) -> list[object]:
    """``obj`` of every rank, in rank order."""
    if not dist.grouped:
        return [obj]
    out: list[object] = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


def epoch_batches(n: int, batch_size: int, seed: int, stage: int, epoch: int, dist: Dist) -> list[list[int]]:
    """This process's batches of one epoch: a permutation seeded by (seed, stage, epoch), cut into
    global batches of ``batch_size × world`` (the last partial one dropped), each split by rank.
    Over the ranks, every sample of the full global batches appears once."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, epoch]).generate_state(1)[0]))
    perm = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * dist.world
    return [perm[start + dist.rank * batch_size : start + (dist.rank + 1) * batch_size]
            for start in range(0, n - per_step + 1, per_step)]


def weights_digest(net: nn.Module) -> str:
    """sha256 of a network's parameters and buffers (to compare processes or runs)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def compare_ranks(nets: list[nn.Module], wrapped: nn.Module, step: int, dist: Dist, stats: Stats) -> None:
    """Under a process group every process must end with the same weights: record each rank's
    digest of ``nets`` in stats.jsonl (with whether the step ran under DDP: ``wrapped``, what it
    called, possibly compiled) and refuse a run whose ranks differ.

    Raises:
        TrainError: the ranks ended with different weights.
    """
    if not dist.grouped:
        return
    digests = gather(":".join(weights_digest(net) for net in nets), dist)
    stats.write({"step": step, "event": "ranks", "backend": dist.backend,
                 "ddp": isinstance(getattr(wrapped, "_orig_mod", wrapped), DistributedDataParallel),
                 "weights_sha256": digests})
    if len(set(digests)) != 1:
        raise TrainError(f"the {dist.world} processes ended with different weights: {digests}")
