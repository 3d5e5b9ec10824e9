"""Ranks and the data order across them."""

from __future__ import annotations

import pytest
import torch

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
