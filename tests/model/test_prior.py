"""The colour prior and the recommended generator: the torch prior equals the numpy pipeline and
profile, the model starts as the fitted profile, tiles stay seamless."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raw2rgb.config import FieldError
from raw2rgb.model import prior as prior_mod
from raw2rgb.model import prior_fit
from raw2rgb.model.generator import Generator, GeneratorConfig, fold_spectral_norm, init_weights
from raw2rgb.model.infer import TileConfig, run_tiled, run_whole
from raw2rgb.model.presets import PRESETS
from raw2rgb.pipeline import bayer, develop, profile, synth


@pytest.fixture(scope="module")
def frame():
    cam = synth.Camera(pattern="RGGB", noise=0.003)
    mosaic = synth.capture(synth.scene("chelsea", (192, 256)), cam, np.random.default_rng(0))
    packed = bayer.normalize_packed(bayer.planes(mosaic, "RGGB"), cam.black, cam.white, np.float32)
    wb = np.asarray(cam.wb_gains)
    matrix = develop.cam_to_srgb(np.asarray(cam.xyz_to_cam))
    return packed, wb, matrix


def _poly(seed: int = 0, scale: int = 2) -> profile.Profile:
    rng = np.random.default_rng(seed)
    coef = np.zeros((20, 3))
    coef[1:4] = np.eye(3) * 0.9 + rng.normal(0, 0.05, (3, 3))
    coef[4:10] = rng.normal(0, 0.05, (6, 3))
    return profile.Profile(model="poly3", coefficients=tuple(map(tuple, coef)), scale=scale)


def _lut(seed: int = 0, scale: int = 2, n: int = 9) -> profile.Profile:
    """A LUT of a curved colour transform (nodes off the identity in every direction)."""
    axis = np.linspace(0, 1, n)
    rgb = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    mix = np.eye(3) * 0.9 + np.random.default_rng(seed).normal(0, 0.05, (3, 3))
    nodes = np.clip(rgb @ mix.T, 0, 1) ** 0.8
    return profile.Profile(model="lut", coefficients=tuple(map(tuple, nodes)), lut_size=n, scale=scale)


@pytest.mark.parametrize("model", ["poly3", "lut"])
@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("known", [True, False])
def test_the_torch_prior_is_the_classical_pipeline_and_the_profile(frame, scale, known, model):
    packed, wb, matrix = frame
    wb, matrix = (wb, matrix) if known else (None, None)  # unknown: grey world, camera RGB
    fitted = _poly(scale=scale) if model == "poly3" else _lut(scale=scale)
    prior = prior_mod.ColourPrior(scale, model)
    prior.set_profile(fitted)
    colour = torch.from_numpy(develop.frame_colour(packed, wb, matrix))[None]
    # a profile takes the rendering before its gamut clip; a checkpoint of before that, the clipped one
    for extended, gamut in ((1, "extended"), (0, "clip")):
        prior.extended.fill_(extended)
        want = profile.apply(fitted, develop.develop(packed, wb, matrix, scale=scale, gamut=gamut))
        got = prior(torch.from_numpy(packed)[None] * 2 - 1, colour)[0]
        got = ((got + 1) * 0.5).permute(1, 2, 0).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 2e-3  # the numpy pipeline's sRGB table: < half an 8-bit level
    assert prior_mod.ColourPrior(scale, model).extended == 1  # new priors: extended
    prior.set_profile(dataclasses.replace(fitted, gamut="clip"))  # a profile of format 2 sets the clipped input
    assert prior.extended == 0
    prior.set_profile(fitted)
    assert prior.extended == 1
    old = {k: v for k, v in prior_mod.ColourPrior(scale, model).state_dict().items() if k != "extended"}
    loaded = prior_mod.ColourPrior(scale, model)
    loaded.load_state_dict(old)
    assert loaded.extended == 0  # an old checkpoint renders as it was trained


@pytest.mark.parametrize("model", ["poly3", "lut"])
def test_the_recommended_generator_starts_as_its_fitted_profile(frame, model):
    packed, wb, matrix = frame
    g = Generator(GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "scale": 2, "prior_model": model}))
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    fitted, others = {"poly3": (_poly(), [_lut(), _poly(scale=1)]),
                      "lut": (_lut(), [_poly(), _lut(n=5), _lut(scale=1)])}[model]  # another model, size or scale
    for other in others:
        with pytest.raises(ValueError, match=f"the colour prior takes a {model}( 9³)? profile at scale 2, got a"):
            g.prior.set_profile(other)
    g.prior.set_profile(fitted)
    colour = torch.from_numpy(develop.frame_colour(packed, wb, matrix))[None]
    x = torch.from_numpy(packed)[None] * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(g.rgb(x, colour), g.prior(x, colour), rtol=0, atol=0)
        rgb, sal = g(x, colour)
    assert rgb.shape == (1, 3, 192, 256) and sal.shape == (1, 1, 192, 256)
    with pytest.raises(ValueError, match=r"colour \(B, 12\)"):
        g.rgb(x)
    assert float(g.d4[1].weight.detach().abs().max()) == 0.0 and not parametrize_is(g)  # the residual head, at zero
    with pytest.raises(FieldError, match='GeneratorConfig.prior_model: "cubic" is not one of poly3, lut'):
        GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "prior_model": "cubic"})  # refused before any network


def parametrize_is(g: Generator) -> bool:
    """Every conv of the generator under spectral norm (the paper's network)."""
    from torch.nn.utils import parametrize

    from raw2rgb.model.generator import convs

    return all(parametrize.is_parametrized(c, "weight") for c in convs(g))


def test_the_paper_preset_is_unchanged():
    g = Generator(PRESETS["paper"].generator)
    assert g.prior is None and parametrize_is(g)
    assert sum(p.numel() for p in g.parameters() if p.requires_grad) == 24_352_448


def _trained_like(scale: int = 2) -> Generator:
    """The tiny recommended generator with a random residual head: every layer contributes, as after training."""
    g = Generator(GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "scale": scale}))
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    g.prior.set_profile(_poly(scale=scale))
    g.prior.set_detail(*_sharpening(g.prior.detail))  # the detail filter reaches past a tile's edge too
    with torch.no_grad():
        g.d4[1].weight.normal_(0, 0.02)
    return fold_spectral_norm(g.eval())


def _sharpening(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A k×k filter as a camera's detail rendering might be: an unsharp mask, some cross-channel
    leakage, a small offset."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 3, k, k, generator=gen) * 0.01
    blur = torch.ones(k, k) / (k * k)
    for c in range(3):
        weight[c, c] -= 0.5 * blur
        weight[c, c, k // 2, k // 2] += 1.5
    return weight, torch.tensor([0.01, -0.02, 0.015])


def _batches(packed, colour, render, n: int = 4, size: int = 32):
    """Model-range batches of ``n`` crops of a frame (packed pixels), each with ``render(raw, colour)``
    as its target."""
    rng = np.random.default_rng(1)
    for _ in range(2):
        ys, xs = rng.integers(0, packed.shape[1] - size, n), rng.integers(0, packed.shape[2] - size, n)
        raw = torch.stack([torch.from_numpy(packed[:, y : y + size, x : x + size]) for y, x in zip(ys, xs)]) * 2 - 1
        with torch.no_grad():
            yield {"raw": raw, "colour": colour.expand(n, 12), "rgb": render(raw, colour.expand(n, 12)) * 2 - 1}


def test_the_detail_filter_starts_as_the_identity_and_its_fit_recovers_a_known_filter(frame):
    packed, wb, matrix = frame
    colour = torch.from_numpy(develop.frame_colour(packed, wb, matrix))[None]
    x = torch.from_numpy(packed)[None] * 2 - 1
    plain, filtered = prior_mod.ColourPrior(2), prior_mod.ColourPrior(2, detail=5)
    for p in (plain, filtered):
        p.set_profile(_poly())
    with torch.no_grad():
        torch.testing.assert_close(filtered(x, colour), plain(x, colour), rtol=0, atol=0)  # identity until fitted
    weight, bias = _sharpening(5)

    def render(raw, c):  # a known filter after the profile (no clamp: the fit sees the target whole)
        return torch.nn.functional.conv2d(torch.nn.functional.pad(plain.profiled(raw, c), (2,) * 4, mode="replicate"),
                                          weight, bias)

    got_w, got_b, psnr = prior_fit.fit_detail(filtered, _batches(packed, colour, render))
    # the colour planes of a photograph are nearly collinear: the weights are found to 1e-2, what they render exactly
    torch.testing.assert_close(got_w, weight, rtol=0, atol=1e-2)
    torch.testing.assert_close(got_b, bias, rtol=0, atol=1e-2)
    assert psnr > 60
    filtered.set_detail(got_w, got_b)
    with torch.no_grad():
        err = ((filtered(x, colour) + 1) * 0.5 - render(x, colour).clamp(0, 1)).abs().max()
    assert float(err) < 2e-3
    with pytest.raises(ValueError, match=r"takes a 5×5 detail filter, got \(3, 3, 7, 7\)"):
        filtered.set_detail(*_sharpening(7))
    with pytest.raises(ValueError, match="k odd"):
        prior_mod.ColourPrior(2, detail=4)


def test_the_detail_filter_is_part_of_the_prior_is_odd_and_old_configs_load_without_it():
    tiny = PRESETS["tiny"].generator
    assert tiny.detail_filter == 7 and PRESETS["standard"].generator.detail_filter == 7
    no_prior = Generator(GeneratorConfig(**{**tiny.to_json(), "prior": "none"}))  # a preset without its prior
    assert no_prior.prior is None and not any("detail" in k for k in no_prior.state_dict())
    with pytest.raises(FieldError, match="detail_filter: 4 is not accepted"):
        GeneratorConfig(**{**tiny.to_json(), "detail_filter": 4})
    old = {k: v for k, v in tiny.to_json().items() if k != "detail_filter"}  # a config of before the filter
    g = Generator(GeneratorConfig.from_json(old))
    assert g.prior.detail == 0 and not any("detail" in k for k in g.state_dict())
    g = Generator(tiny)
    g.prior.set_detail(*_sharpening(7))
    again = Generator(tiny)
    again.load_state_dict(g.state_dict())
    torch.testing.assert_close(again.prior.detail_weight, _sharpening(7)[0], rtol=0, atol=0)


def test_tiles_of_the_recommended_generator_equal_the_whole_frame(frame):
    packed, wb, matrix = frame
    g = _trained_like()
    colour = develop.frame_colour(packed, wb, matrix)
    whole = run_whole(g, packed, colour=colour)
    tiled = run_tiled(g, packed, TileConfig(tile=64, overlap=24), colour=colour)
    assert tiled.shape == whole.shape == (3, 192, 256)
    assert float((tiled - whole).abs().max()) * 255 < 1.0



def test_the_prior_keeps_its_profiles_white_balance_rule_and_old_checkpoints_read_as_before():
    from raw2rgb.model.prior import model_white_balance
    from raw2rgb.pipeline.whitebalance import LEGACY_RULE, WhiteBalance

    g = Generator(PRESETS["tiny"].generator)
    g.prior.set_profile(dataclasses.replace(_poly(scale=g.cfg.scale),
                                            white_balance=WhiteBalance("dataset", (1.75, 1.0, 1.25))))
    assert model_white_balance(g) == WhiteBalance("dataset", (1.75, 1.0, 1.25))
    state = g.state_dict()
    again = Generator(PRESETS["tiny"].generator)
    again.load_state_dict(state)
    assert model_white_balance(again) == model_white_balance(g)
    old = {k: v for k, v in state.items() if not k.startswith("prior.wb_")}  # a checkpoint of before the rules
    again.load_state_dict(old)
    assert model_white_balance(again) == WhiteBalance(LEGACY_RULE)
    no_prior = Generator(GeneratorConfig(base=16, res_blocks=2, saliency_width=16))
    assert model_white_balance(no_prior) == WhiteBalance(LEGACY_RULE)  # it takes no colour
