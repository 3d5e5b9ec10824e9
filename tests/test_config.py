"""Every config dataclass round-trips through JSON, nested configs and tuples included."""

from __future__ import annotations

import json

import pytest

from raw2rgb.convert import ConvertConfig
from raw2rgb.errors import UserError
from raw2rgb.model.discriminator import DiscriminatorConfig
from raw2rgb.model.generator import GeneratorConfig
from raw2rgb.model.infer import TileConfig
from raw2rgb.model.train import Runtime, TrainConfig
from raw2rgb.pipeline.pairs import PatchParams
from raw2rgb.pipeline.synth import Camera, Look
from raw2rgb.prepare import PrepareConfig

CONFIGS = [
    GeneratorConfig(base=8, res_blocks=1, saliency_width=8, scale=2),
    DiscriminatorConfig(base=8),
    TrainConfig.preset_config("tiny", stage1_epochs=3, betas=(0.9, 0.99), crop=64),
    Runtime(stages="2", max_steps=7, vgg_weights="/w.pth"),
    TileConfig(tile=256, overlap=32, frame_norm=False),
    ConvertConfig(method="model", source="c.pt", source_sha256="ab", zrr_levels="pynet"),
    PatchParams(size=128, stride=64, min_score=0.3),
    PrepareConfig(src="/s", out="/o", layout="pairs", patch=PatchParams(size=96), split=(0.8, 0.1, 0.1)),
    Camera(pattern="GBRG", black=(1, 2, 3, 4), wb_gains=(1.5, 1.0, 2.0)),
    Look(warmth=(1.0, 1.0, 1.0), saturation=1.1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_through_json(cfg):
    text = json.dumps(cfg.to_json())
    back = type(cfg).from_json(json.loads(text))
    assert back == cfg and hash(back) == hash(cfg)  # equal, tuples restored (a list would not hash)


def test_unknown_fields_are_refused():
    with pytest.raises(UserError, match="TrainConfig: unknown fields lr_x"):
        TrainConfig.from_json({"lr_x": 1})
