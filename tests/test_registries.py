"""Every entry of every registry runs: each preset builds its networks and takes a training step, each
layout detects its own folder (and no other's), each saliency method labels an image, each rendering
method converts a frame, each loss term computes. The tests are parametrised over the registries'
live entries, so a new entry is tested as soon as it is registered (a layout or an input kind asks
for its example below). Tiny sizes, on the CPU; nothing is downloaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from raw2rgb import convert
from raw2rgb.model import checkpoint, state
from raw2rgb.model.discriminator import Discriminator
from raw2rgb.model.distributed import Dist
from raw2rgb.model.generator import Generator
from raw2rgb.model.presets import PRESETS
from raw2rgb.model.recipe import Runtime, TrainConfig
from raw2rgb.model.terms import LOSS_TERMS, LossWeights, StepTensors, objective
from raw2rgb.pipeline import pairs, rawio, synth
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline.stage import Item
from raw2rgb.registry import AUTO, Auto, Registry, UnknownEntry
from raw2rgb.render import RENDER_METHODS, inputs
from raw2rgb.salgan import label
from raw2rgb.salgan.methods import SALIENCY_METHODS, resolve_method
from raw2rgb.salgan.weights import ENV_VAR
from tests.conftest import BLACK, WHITE, flat_mosaic

REGISTRIES = {"preset": PRESETS, "layout": pairs.LAYOUTS, "saliency method": SALIENCY_METHODS,
              "rendering method": RENDER_METHODS, "loss term": LOSS_TERMS}


# -- the rule every registry follows -------------------------------------------------------------------

@pytest.mark.parametrize("what", REGISTRIES)
def test_every_registry_lists_its_choices_with_help_and_a_default_that_is_one(what):
    reg = REGISTRIES[what]
    assert len(reg) > 0 and reg.what
    assert reg.choices() == ((AUTO,) if reg.auto else ()) + tuple(reg)
    assert reg.default is None or reg.default in reg.choices()
    assert reg.help().split("; ")[0].startswith(f"{reg.choices()[0]}: ")
    for name, entry in reg.items():
        assert f"{name}: {entry.help}" in reg.help() and reg.resolve(name) == name


def test_an_auto_rule_is_a_choice_that_resolves_to_an_entry():
    reg: Registry = Registry("colour", default=AUTO, auto=Auto("the warmer one", lambda hot: "red" if hot else "blue"))
    for name in ("red", "blue"):
        reg.add(name, type("Colour", (), {"help": f"a {name} colour"})())
    assert "auto" in reg and list(reg) == ["red", "blue"] and reg.choices() == ("auto", "red", "blue")
    assert reg.help() == "auto: the warmer one; red: a red colour; blue: a blue colour"
    assert (reg.resolve("auto", True), reg.resolve("auto", False), reg.resolve("blue")) == ("red", "blue", "blue")
    with pytest.raises(KeyError, match="a rule, not an entry: resolve it first"):
        reg["auto"]
    with pytest.raises(UnknownEntry, match=r"unknown colour 'green' \(one of auto, red, blue\)"):
        reg.resolve("green")
    with pytest.raises(ValueError, match="names the registry's auto rule"):
        reg.add("auto", reg["red"])
    with pytest.raises(ValueError, match="already registered"):
        reg.add("red", reg["red"])
    with pytest.raises(ValueError, match="needs an auto rule"):
        Registry("colour", default=AUTO)
    plain: Registry = Registry("shape")
    plain.add("square", type("Shape", (), {"help": "four sides"})())
    assert "auto" not in plain and plain.choices() == ("square",)


# -- presets: each builds its networks and takes a step of each stage its schedule runs ------------------

def _batch(n: int, size: int, scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = size * scale
    return {"raw": torch.rand(n, 4, size, size, generator=g) * 2 - 1,
            "rgb": torch.rand(n, 3, out, out, generator=g) * 2 - 1,
            "saliency": torch.rand(n, 1, out, out, generator=g),
            "colour": torch.tensor([[2.0, 1, 1.5, 1, 0, 0, 0, 1, 0, 0, 0, 1]] * n)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_its_networks_and_takes_a_training_step(name):
    from raw2rgb.model.train import train_step

    cfg = TrainConfig.preset_config(name, weights=LossWeights(perceptual=0.0))
    nets = state.build(cfg, Runtime(channels_last=False), torch.device("cpu"), Dist(), need_vgg=False, prior=None)
    assert nets.G.cfg == cfg.generator and (nets.G_ema is not None) == (cfg.ema > 0)
    batch = _batch(1, 32, cfg.generator.scale)  # the smallest crop D's reflection padding takes
    stages = [s for s, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)) if epochs]
    for stage in stages:
        before = [p.detach().clone() for p in nets.G.parameters()]
        opts = state.optimisers(nets, cfg, stage, False)
        terms = train_step(nets, opts, batch, stage, cfg.weights, torch.autocast("cpu", enabled=False))
        expected = {"rgb", "attention", "total"} | ({"d", "adversarial"} if stage == 2 else set())
        assert set(terms) == expected, stage
        assert all(math.isfinite(v.item()) for v in terms.values())
        assert any(not torch.equal(a, b) for a, b in zip(before, nets.G.parameters()))  # G learnt


# -- layouts: each detects its own folder and no other's, and finds its pair there ------------------------

def _dng(path, preview: bool = False):
    camera = synth.Camera(black=BLACK, white=WHITE)
    look = np.full((32, 48, 3), 128, np.uint8) if preview else None
    return synth.write_dng(path, flat_mosaic("RGGB", (32, 48)), camera, preview=look)


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 32), (90, 120, 150)).save(path)


def _mosaic_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 48), 600, np.uint16)).save(path)


# An example source folder per layout: a layout registered without one fails its test, asking for it.
FOLDERS = {
    "zrr": lambda src: (_mosaic_png(src / "train" / "huawei_raw" / "0.png"), _jpeg(src / "train" / "canon" / "0.jpg")),
    "aim2019": lambda src: (_mosaic_png(src / "TrainingPhoneRaw" / "7.png"), _jpeg(src / "TrainingCanonRGB" / "7.jpg")),
    "pairs": lambda src: ((src / "raw").mkdir(parents=True), _dng(src / "raw" / "a.dng"), _jpeg(src / "rgb" / "a.jpg")),
    "raw+jpeg": lambda src: (src.mkdir(parents=True), _dng(src / "a.dng"), _jpeg(src / "a.jpg")),
    "raw+embedded": lambda src: (src.mkdir(parents=True), _dng(src / "a.dng", preview=True)),
}


@pytest.fixture(scope="module")
def layout_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for name, make in FOLDERS.items():
        make(root / name)
    return root


@pytest.mark.parametrize("name", list(pairs.LAYOUTS))
def test_each_layout_detects_its_own_folder_and_no_other(name, layout_folders, monkeypatch):
    if name not in FOLDERS:
        pytest.fail(f"layout {name!r} has no example folder: add one to FOLDERS")
    monkeypatch.setattr(rawio, "EMBEDDED_MIN_WIDTH", 16)  # the example's small embedded JPEG
    detecting = {folder: pairs.LAYOUTS.resolve(AUTO, layout_folders / folder) for folder in FOLDERS}
    assert [folder for folder, found in detecting.items() if found == name] == [name]
    found, problems = pairs.find_pairs(layout_folders / name, name)
    assert len(found) == 1 and problems == []
    assert pairs.find_pairs(layout_folders / name, AUTO)[0] == found


def test_a_folder_of_no_layout_is_refused_naming_them(tmp_path):
    _jpeg(tmp_path / "only.jpg")
    with pytest.raises(pairs.PairError, match="no known layout") as e:
        pairs.LAYOUTS.resolve(AUTO, tmp_path)
    assert all(f"{name}: " in str(e.value) for name in pairs.LAYOUTS)


# -- saliency methods: each labels an image --------------------------------------------------------------

@pytest.fixture(scope="module")
def salgan_weights(tmp_path_factory):
    """SalGAN of random weights, as a converted weights file (tests/salgan/conftest.py)."""
    from raw2rgb.salgan.weights import import_npz, save_weights
    from tests.salgan.conftest import random_npz_arrays

    folder = tmp_path_factory.mktemp("salgan")
    np.savez(folder / "gen.npz", **random_npz_arrays())
    return save_weights(import_npz(folder / "gen.npz"), folder / "salgan.pt")


@pytest.mark.parametrize("name", list(SALIENCY_METHODS))
def test_each_saliency_method_labels_an_image(name, salgan_weights, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(synth.scene("coffee", (48, 64))).save(image)
    method = resolve_method(name, salgan_weights if SALIENCY_METHODS[name].needs_weights else None)
    assert method.name == name and bool(method.weights_sha256) == SALIENCY_METHODS[name].needs_weights
    result = label.label([("scene", str(image))], tmp_path / "sal", method, device="cpu", workers=0)
    assert (result.done, result.failed) == (1, [])
    shard = label.read_saliency_shard(tmp_path / "sal" / "saliency-00000.h5")
    assert shard.method == name and shard.ids == ["scene"]
    assert shard.maps.shape == (1, 48, 64) and shard.maps.dtype == np.uint8 and shard.maps.max() > shard.maps.min()


def test_saliency_auto_is_salgan_with_weights_else_spectral_residual(salgan_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_method(AUTO).name == "spectral-residual"
    assert resolve_method(AUTO, salgan_weights).name == "salgan"
    monkeypatch.setenv(ENV_VAR, str(salgan_weights))
    assert resolve_method(AUTO).name == "salgan"


# -- rendering methods: each converts a frame ------------------------------------------------------------

@pytest.fixture(scope="module")
def render_inputs(tmp_path_factory):
    """An example file per input kind: a checkpoint of a tiny untrained generator, a profile. An input
    kind registered without one fails its methods' test, asking for it."""
    folder = tmp_path_factory.mktemp("inputs")
    cfg = TrainConfig.preset_config("tiny")
    g = Generator(cfg.generator)
    checkpoint.save(folder / "tiny.pt", {"G": g, "D": Discriminator(cfg.discriminator)}, cfg.to_json(), {})
    identity = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)) + ((0.0, 0.0, 0.0),) * 16
    return {"checkpoint": folder / "tiny.pt",
            "profile": colour_profile.save(colour_profile.Profile(coefficients=identity), folder / "identity.json")}


@pytest.mark.parametrize("name", list(RENDER_METHODS))
def test_each_rendering_method_converts_a_frame(name, render_inputs, tmp_path):
    needs = RENDER_METHODS[name].needs
    if needs is not None and needs.name not in render_inputs:
        pytest.fail(f"input {needs.name!r} (of method {name!r}) has no example: add one to render_inputs")
    given = {needs.name: render_inputs[needs.name]} if needs else {}
    dng = synth.write_dng(tmp_path / "frame.dng", synth.capture(synth.scene("chelsea", (64, 96)), synth.Camera()),
                          synth.Camera())
    cfg = convert.resolve(name, **given, tile=32, overlap=8)
    assert cfg.method == name and (cfg.source is not None) == (needs is not None)
    result = convert.convert([Item("frame", (str(dng),))], tmp_path / "out", cfg, device="cpu")
    assert (result.done, result.failed) == (1, [])
    rgb = np.asarray(Image.open(tmp_path / "out" / "frame.png"))
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * 3 == rgb.shape[1] * 2  # the frame's 2:3
    # auto, given this input alone (or none): the first method that renders with it
    kind = needs.name if needs else None
    same = [n for n, m in RENDER_METHODS.items() if (m.needs.name if m.needs else None) == kind]
    assert RENDER_METHODS.resolve(AUTO, given) == same[0]


def test_every_input_kind_is_one_option_with_its_help():
    kinds = inputs()
    assert len({i.name for i in kinds}) == len(kinds) == len({m.needs.name for _, m in RENDER_METHODS.items()
                                                               if m.needs})
    assert all(i.metavar and i.help and i.how and i.option == f"--{i.name}" for i in kinds)


# -- loss terms: each computes a finite value the generator can learn from ---------------------------------

@pytest.fixture(scope="module")
def step_modules():
    """A tiny discriminator and the perceptual module over a randomly initialised VGG16 (no download)."""
    from torchvision.models import vgg16

    from raw2rgb.model.losses import VGG_CONV4_3, Perceptual

    torch.manual_seed(0)
    return Discriminator(PRESETS["tiny"].discriminator), Perceptual(vgg16(weights=None).features[:VGG_CONV4_3].eval())


@pytest.mark.parametrize("name", list(LOSS_TERMS))
def test_each_loss_term_computes_a_finite_value_in_its_stages(name, step_modules):
    D, perceptual = step_modules
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    rgb = (y + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).requires_grad_(True)
    term = LOSS_TERMS[name]
    assert term.stages and set(term.stages) <= {1, 2} and term.help
    for stage in term.stages:
        t = StepTensors(x=torch.rand(2, 4, 32, 32, generator=g) * 2 - 1, y=y, s=torch.rand(2, 1, 32, 32, generator=g),
                        rgb=rgb, saliency=torch.rand(2, 1, 32, 32, generator=g), stage=stage, D=D,
                        perceptual=perceptual)
        value = term.compute(t)
        assert value is not None and value.ndim == 0 and math.isfinite(value.item()) and value.item() >= 0
        (grad,) = torch.autograd.grad(value, rgb)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # G learns through it
        terms, _ = objective(LossWeights(), t)
        assert name in terms, f"LossWeights has no field {name!r} (a term's weight) or the objective skips it"
