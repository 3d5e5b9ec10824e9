"""Each extension point is one entry in one place: a toy preset, layout, saliency method and
rendering method, each added to its registry, is a choice in ``--help`` and is used; a toy loss term
(one field and one function) enters the objective's total. The CLI loads lazily."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.config import checked
from raw2rgb.model import losses
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig, Preset
from raw2rgb.model.recipe import TrainConfig, train_config
from raw2rgb.pipeline.pairs import LAYOUTS, Layout, find_pairs
from raw2rgb.render import RENDER_METHODS, RenderMethod
from raw2rgb.salgan.label import SALIENCY_METHODS, SaliencyMethod, resolve_method

ROOT = Path(__file__).resolve().parents[1]


def _help(*command: str) -> str:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.fixture
def toy(request):
    registry, name, entry = request.param
    registry.add(name, entry)
    yield name
    registry.remove(name)


def test_a_toy_preset_is_a_choice_and_a_recipe():
    PRESETS.add("toy", Preset(GeneratorConfig(base=8, res_blocks=1, saliency_width=8), DiscriminatorConfig(base=8),
                              schedule={"stage1_epochs": 1, "stage2_epochs": 0}, help="a toy network for a test"))
    try:
        assert "standard|tiny|paper|toy" in _help("train") and "toy: a toy network for a test" in _help("train")
        cfg = train_config("toy", None, {"seed": 3})
        assert cfg.generator.base == 8 and cfg.stage2_epochs == 0 and cfg.seed == 3 and cfg.preset == "toy"
        assert TrainConfig.from_json(cfg.to_json()) == cfg  # the config's preset field accepts it
    finally:
        PRESETS.remove("toy")
    assert "toy" not in _help("train")


def test_a_toy_layout_is_a_choice_and_finds_pairs(tmp_path):
    def find(f, pairs_csv):
        f.match(f.by_stem(f.src / "in", {".dng"}), f.by_stem(f.src / "out", {".jpg"}), "", False, None)

    LAYOUTS.add("toy", Layout(lambda src: (src / "in").is_dir(), find, scale="2", help="in/ and out/ folders"))
    try:
        assert "toy: in/ and out/ folders" in _help("prepare") and "|toy]" in _help("prepare")
        (tmp_path / "in").mkdir(), (tmp_path / "out").mkdir()
        (tmp_path / "in" / "a.dng").write_bytes(b""), (tmp_path / "out" / "a.jpg").write_bytes(b"")
        pairs, problems = find_pairs(tmp_path, "toy")
        assert [p.scene for p in pairs] == ["a"] and not problems
    finally:
        LAYOUTS.remove("toy")


def test_a_toy_saliency_method_is_a_choice_and_labels():
    SALIENCY_METHODS.add("toy", SaliencyMethod("a flat map", on_image=lambda rgb: np.ones(rgb.shape[:2], np.float32)))
    try:
        assert "auto|salgan|spectral-residual|toy" in _help("saliency") and "toy: a flat map" in _help("saliency")
        assert "auto|salgan|spectral-residual|toy" in _help("prepare")
        assert resolve_method("toy").name == "toy"
    finally:
        SALIENCY_METHODS.remove("toy")


def test_a_toy_rendering_method_is_a_choice_for_convert_and_evaluate():
    class Grey:
        scale, white_balance = None, None

        def batch(self, b, scale):
            raw = b["raw"]
            return torch.zeros(raw.shape[0], 3, raw.shape[-2] * scale, raw.shape[-1] * scale)

    RENDER_METHODS.add("toy", RenderMethod("a grey picture", lambda source, device: Grey()))
    try:
        for command in ("convert", "evaluate"):
            assert "model|isp|profile|toy" in _help(command) and "toy: a grey picture" in _help(command)
        from raw2rgb.convert import resolve
        assert resolve("toy", None).method == "toy"
    finally:
        RENDER_METHODS.remove("toy")


def test_a_toy_loss_term_is_one_field_and_one_function():
    @dataclasses.dataclass(frozen=True)
    class Weights(losses.LossWeights):
        brightness: float = checked(2.0, min=0)

    losses.g_term("brightness")(lambda t: (t.rgb.mean() - t.y.mean()).abs())
    try:
        y = torch.rand(2, 3, 8, 8)
        rgb = y + 0.25
        t = losses.StepTensors(x=torch.zeros(2, 4, 8, 8), y=y, s=torch.ones(2, 1, 8, 8), rgb=rgb,
                               saliency=torch.ones(2, 1, 8, 8), stage=1)
        terms, total = losses.objective(Weights(), t)
        assert set(terms) == {"rgb", "attention", "brightness"}  # stage 2's terms are not computed in stage 1
        assert terms["brightness"].item() == pytest.approx(0.25, abs=1e-6)
        assert total.item() == pytest.approx(0.25 + 0.5 * 0.25 + 2.0 * 0.25, abs=1e-5)
    finally:
        losses.G_TERMS.pop("brightness")


def test_help_imports_no_torch_and_convert_never_imports_the_training_loop(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "raw2rgb", "--help"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "raw2rgb.cli" in imported
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom raw2rgb.cli import main\n"
             "r = CliRunner().invoke(main, ['convert', 'missing.dng', '-o', 'out', '--checkpoint', '.'])\n"
             "print('raw2rgb.model.convert_ran' if 'torch' in sys.modules else '', "
             "'raw2rgb.model.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.split() == ["raw2rgb.model.convert_ran", "False"], out.stdout + out.stderr
