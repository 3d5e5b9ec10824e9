"""On a CUDA GPU (skipped elsewhere; `make gpu-check` runs them): the bf16 training step, tiled
conversion against the CPU, the colour prior in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raw2rgb.model.generator import Generator, GeneratorConfig, fold_spectral_norm, init_weights
from raw2rgb.model.infer import TileConfig, run_tiled
from raw2rgb.model.presets import PRESETS
from raw2rgb.model.train import Runtime, train
from tests.model.conftest import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
COLOUR = np.array([2.0, 1.0, 1.6, 1.7, -0.9, 0.2, 0.0, 1.3, -0.4, 0.0, -0.3, 1.3], np.float32)


def test_training_in_bf16_on_cuda_steps_and_resumes(tiny_shards, tmp_path):
    rt = Runtime(device="cuda", workers=2, log_every=1, max_steps=2)
    first = train(tiny_shards, tmp_path / "run", tiny_config(), rt)
    assert first.step == 2
    second = train(tiny_shards, tmp_path / "run", tiny_config(), Runtime(device="cuda", workers=2, log_every=1))
    assert second.finished and second.step == 4


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_cuda_conversion_agrees_with_the_cpu(preset):
    g = Generator(GeneratorConfig(**{**PRESETS[preset].generator.to_json(), "scale": 2}))
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    if g.prior is not None:
        with torch.no_grad():
            g.d4[1].weight.normal_(0, 0.02)
    g = fold_spectral_norm(g.eval())
    x = np.random.default_rng(0).random((4, 128, 192), np.float32)
    cpu = run_tiled(g, x, TileConfig(tile=96, overlap=32), "cpu", colour=COLOUR)
    gpu = run_tiled(g.cuda(), x, TileConfig(tile=96, overlap=32), "cuda", colour=COLOUR).cpu()  # bf16
    assert float((gpu - cpu).abs().mean()) * 255 < 2.0
    assert len(np.unique(np.rint(gpu.numpy() * 65535))) > 8000  # 16-bit output, not bf16 levels


def test_adam_is_fused_on_cuda():
    from raw2rgb.model.distributed import Dist
    from raw2rgb.model.state import build, optimisers

    cfg = tiny_config()
    nets = build(cfg, Runtime(device="cuda"), torch.device("cuda"), Dist(), False, None)
    opts = optimisers(nets, cfg, 2, scaler_on=False)
    assert opts.opt_G.defaults["fused"] and opts.opt_D.defaults["fused"]
