"""Ranks and the data order across them."""

from __future__ import annotations

import json

import pytest
import torch

from raw2rgb.errors import ConfigError
from raw2rgb.model import distributed
from raw2rgb.model.distributed import Dist, agree, any_rank, epoch_batches, weights_digest


@pytest.mark.parametrize("n,batch,world", [(37, 4, 1), (37, 4, 2), (40, 3, 3), (8, 8, 1)])
def test_epoch_batches_give_each_sample_at_most_once_across_ranks(n, batch, world):
    per_rank = [epoch_batches(n, batch, seed=3, stage=1, epoch=2, dist=Dist(rank=r, world=world))
                for r in range(world)]
    steps = n // (batch * world)
    assert all(len(b) == steps and all(len(x) == batch for x in b) for b in per_rank)  # same number of steps
    seen = [i for b in per_rank for x in b for i in x]
    assert len(seen) == len(set(seen)) == steps * batch * world  # once each; the last partial batch dropped
    assert set(seen) <= set(range(n))


def test_epoch_batches_are_a_function_of_seed_stage_and_epoch():
    d = Dist()
    a = epoch_batches(32, 4, seed=0, stage=1, epoch=0, dist=d)
    assert a == epoch_batches(32, 4, seed=0, stage=1, epoch=0, dist=d)
    others = [epoch_batches(32, 4, seed=s, stage=st, epoch=e, dist=d) for s, st, e in ((1, 1, 0), (0, 2, 0), (0, 1, 1))]
    assert all(o != a for o in others)
    # over several epochs every sample comes round (the dropped tail differs per epoch)
    covered = {i for e in range(6) for b in epoch_batches(30, 4, 0, 1, e, d) for i in b}
    assert covered == set(range(30))


def test_one_process_agrees_with_itself():
    flags = torch.tensor([False, True])
    assert any_rank(flags, Dist()).tolist() == [False, True]
    assert agree(True, Dist(), torch.device("cpu")) and not agree(False, Dist(), torch.device("cpu"))


def test_weights_digest_sees_every_parameter_and_buffer():
    net = torch.nn.BatchNorm2d(3)
    before = weights_digest(net)
    net.running_mean[1] += 1e-6
    assert weights_digest(net) != before


def test_one_process_makes_a_process_group_only_when_asked(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv(distributed.FORCE_GROUP, raising=False)
    assert distributed.init(torch.device("cpu")) == Dist()
    monkeypatch.setenv(distributed.FORCE_GROUP, "1")
    d = distributed.init(torch.device("cpu"))
    try:
        assert d.grouped and d.owned and d.world == 1 and d.backend == "gloo"
        assert agree(True, d, torch.device("cpu"))
        assert any_rank(torch.tensor([False, True]), d).tolist() == [False, True]
        assert distributed.gather("x", d) == ["x"]
    finally:
        d.close()
    assert not torch.distributed.is_initialized()


def test_more_processes_than_gpus_are_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^4 training processes on this machine but 2 GPU\(s\): process 2 has no "
                       r"GPU of its own; start at most 2 \(torchrun --nproc_per_node 2\)$"):
        distributed.init(torch.device("cuda"))
    assert not torch.distributed.is_initialized()


def test_training_in_a_forced_group_wraps_ddp_and_agrees_on_stops_every_few_steps(tiny_shards, tmp_path,
                                                                                  monkeypatch):
    from raw2rgb.model import guards
    from raw2rgb.model import train as train_mod
    from tests.model.conftest import tiny_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv(distributed.FORCE_GROUP, "1")
    agreed = []
    real_agree = distributed.agree
    monkeypatch.setattr(distributed, "agree", lambda flag, d, dev: agreed.append(d.grouped) or real_agree(flag, d, dev))
    monkeypatch.setattr(guards, "AGREE_EVERY", 3)
    # 8 samples at batch 1: 8 steps an epoch, agreed at steps 3 and 6 and at the epoch's last (8)
    r = train_mod.train(tiny_shards, tmp_path / "run", tiny_config(batch_size=1, stage2_epochs=0),
                        train_mod.Runtime(workers=0, log_every=1))
    assert r.finished and r.step == 8 and agreed == [True, True, True]
    records = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    ranks = [x for x in records if x.get("event") == "ranks"]
    assert ranks and ranks[-1]["ddp"] is True and ranks[-1]["backend"] == "gloo"
    assert not torch.distributed.is_initialized()
