"""The checkpoint format: atomic, weights_only, readable by inference without the training loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raw2rgb.model import checkpoint
from raw2rgb.model.discriminator import Discriminator
from raw2rgb.model.generator import Generator, GeneratorConfig, init_weights
from raw2rgb.model.infer import load_generator
from raw2rgb.model.presets import PRESETS
from raw2rgb.model.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _nets(seed: int = 0):
    g, d = Generator(PRESETS["tiny"].generator), Discriminator(PRESETS["tiny"].discriminator)
    init_weights(g, 0.02, torch.Generator().manual_seed(seed))
    return g, d


def test_a_checkpoint_written_before_the_restructure_still_loads(tmp_path):
    """The format of raw2rgb 0.x before the model package was restructured: the loss weights were
    TrainConfig fields (w_attention, …). Inference reads it; training reads its config."""
    g = Generator(GeneratorConfig(base=16, res_blocks=2, saliency_width=16))
    d = Discriminator(PRESETS["tiny"].discriminator)
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    legacy_config = {k: v for k, v in TrainConfig.preset_config("tiny").to_json().items() if k != "weights"}
    legacy_config.update(w_attention=0.5, w_adversarial=0.01, w_perceptual=0.0)
    legacy_config["generator"] = {"base": 16, "res_blocks": 2, "saliency_width": 16, "scale": 1}
    blob = {"format": 1, "kind": "raw2rgb-train", "config": legacy_config, "G": g.state_dict(), "D": d.state_dict(),
            "progress": {"stage": 3, "epoch": 0, "batch": 0, "step": 4, "stats_lines": 9}, "cameras": ["X Y"],
            "rng": checkpoint.rng_state()}
    torch.save(blob, tmp_path / "old.pt")
    loaded, meta = load_generator(tmp_path / "old.pt")
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    ref = g.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.rgb(x), ref.rgb(x), rtol=0, atol=1e-5)
    assert meta["cameras"] == ["X Y"]
    cfg = TrainConfig.from_json(legacy_config)
    assert cfg.weights.perceptual == 0.0 and cfg.weights.attention == 0.5


def test_inference_reads_only_the_generator(tmp_path):
    g, d = _nets()
    opt = torch.optim.Adam(d.parameters())
    checkpoint.save(tmp_path / "c.pt", {"G": g, "D": d, "opt_D": opt}, TrainConfig.preset_config("tiny").to_json(), {})
    g_config, state, meta = checkpoint.load_generator_state(tmp_path / "c.pt")
    assert set(state) == set(g.state_dict()) and g_config["base"] == 16 and meta["path"].endswith("c.pt")
    for k, v in g.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, equal_nan=True, msg=k)  # NaN: a prior with no gains


def test_convert_never_imports_the_training_loop():
    code = ("import sys, raw2rgb.convert, raw2rgb.model.infer; "
            "print(sorted(m for m in sys.modules if m in ('raw2rgb.model.train', 'raw2rgb.model.discriminator', "
            "'raw2rgb.model.losses')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_the_checkpoint_is_read_once_per_process(tmp_path, monkeypatch):
    g, d = _nets()
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"G": g, "D": d}, TrainConfig.preset_config("tiny").to_json(), {})
    calls = []
    real = checkpoint.load_generator_state
    monkeypatch.setattr(checkpoint, "load_generator_state", lambda p: (calls.append(p), real(p))[1])
    a, _ = load_generator(path)
    b, _ = load_generator(path)
    assert a is b and len(calls) == 1
    os.utime(path, ns=(1, 1))  # a new file at the same path is read again
    load_generator(path)
    assert len(calls) == 2


def test_rng_state_round_trips_and_holds_no_cuda_state():
    state = checkpoint.rng_state()
    assert set(state) == {"torch", "numpy", "numpy_pos", "python"}
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_unreadable_and_foreign_files_are_one_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError, match="x.pt: not a readable checkpoint"):
        checkpoint.load(tmp_path / "x.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="other.pt: not a raw2rgb checkpoint"):
        checkpoint.load_generator_state(tmp_path / "other.pt")
