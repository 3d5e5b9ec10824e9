"""Each extension point is one entry in one place: a toy preset, layout, saliency method and
rendering method, each added to its registry, is a choice in ``--help`` and is used; a toy input kind
is one declaration on its rendering method; a toy loss term (one entry and one field) enters the
objective's total. (What the CLI imports: tests/test_imports.py.)"""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.config import field_option
from raw2rgb.errors import InputError
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig, Preset
from raw2rgb.model.recipe import TrainConfig, train_config
from raw2rgb.model.terms import LOSS_TERMS, TERMS, LossTerm, LossWeights, StepTensors, objective, weight
from raw2rgb.pipeline.pairs import LAYOUTS, Layout, find_pairs
from raw2rgb.render import RENDER_METHODS, RenderInput, RenderMethod, inputs
from raw2rgb.salgan.methods import SALIENCY_METHODS, SaliencyMethod, resolve_method


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


def test_a_toy_input_kind_is_one_declaration_on_its_method(tmp_path):
    """A method that renders with a new kind of file: its input is an input of the library's commands
    (and so the CLI's option), named in the message when missing, and its file is the stage's source."""
    lut = RenderInput("lut", "CUBE", "A 3D LUT file.", "any .cube file")
    RENDER_METHODS.add("toy", RenderMethod("a LUT after the classical pipeline", lambda source, device: None,
                                           needs=lut))
    try:
        assert [i.name for i in inputs()] == ["checkpoint", "profile", "lut"]
        from raw2rgb.convert import resolve
        with pytest.raises(InputError, match=r"convert --method toy needs --lut CUBE \(any \.cube file\)"):
            resolve("toy")
        (tmp_path / "look.cube").write_text("LUT_3D_SIZE 2\n")
        cfg = resolve(lut=tmp_path / "look.cube")  # auto: the method whose input is given
        assert (cfg.method, cfg.source) == ("toy", str(tmp_path / "look.cube")) and cfg.source_sha256
        assert RENDER_METHODS.resolve("auto", {}) == "isp"
    finally:
        RENDER_METHODS.remove("toy")
    assert [i.name for i in inputs()] == ["checkpoint", "profile"]


def test_a_toy_loss_term_is_one_entry_and_one_field():
    LOSS_TERMS.add("brightness", LossTerm("the error of the mean brightness",
                                          lambda t: (t.rgb.mean() - t.y.mean()).abs()))
    try:
        @dataclasses.dataclass(frozen=True)
        class Weights(LossWeights):
            brightness: float = weight("brightness", 2.0)

        y = torch.rand(2, 3, 8, 8)
        rgb = y + 0.25
        t = StepTensors(x=torch.zeros(2, 4, 8, 8), y=y, s=torch.ones(2, 1, 8, 8), rgb=rgb,
                        saliency=torch.ones(2, 1, 8, 8), stage=1)
        terms, total = objective(Weights(), t)
        assert set(terms) == {"rgb", "attention", "brightness"}  # stage 2's terms are not computed in stage 1
        assert terms["brightness"].item() == pytest.approx(0.25, abs=1e-6)
        assert total.item() == pytest.approx(0.25 + 0.5 * 0.25 + 2.0 * 0.25, abs=1e-5)
        assert "brightness" in TERMS  # logged and plotted
        assert "the error of the mean brightness" in field_option(dataclasses.fields(Weights)[-1])["help"]
    finally:
        LOSS_TERMS.remove("brightness")
    assert "brightness" not in TERMS
