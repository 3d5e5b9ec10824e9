"""The learned global colour branch (``GeneratorConfig.colour_branch="global"``): a fresh one renders
as the prior alone, it needs the prior and old configs load without it, tiles take the whole frame's
thumbnail and stay seamless, and it learns per-image light casts that no white-balance rule knows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raw2rgb.config import FieldError
from raw2rgb.model.generator import Generator, GeneratorConfig, fold_spectral_norm, init_weights
from raw2rgb.model.infer import TileConfig, run_tiled, run_whole
from raw2rgb.model.presets import PRESETS
from raw2rgb.model.prior import corrected_colour, frame_thumbnail
from raw2rgb.pipeline import bayer, develop, synth

TINY_BRANCH = GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "colour_branch": "global"})


@pytest.fixture(scope="module")
def frame():
    cam = synth.Camera(noise=0.003, wb_gains=(2.6, 1.0, 1.3))  # a warm light the colour below does not know
    mosaic = synth.capture(synth.scene("chelsea", (192, 256)), cam, np.random.default_rng(0))
    packed = bayer.normalize_packed(bayer.planes(mosaic), cam.black, cam.white, np.float32)
    colour = develop.frame_colour(packed, np.array([2.0, 1.0, 1.6]), develop.cam_to_srgb(np.asarray(cam.xyz_to_cam)))
    return packed, colour


def _seeded(cfg: GeneratorConfig) -> Generator:
    g = Generator(cfg)
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    return g


def test_a_fresh_branch_renders_exactly_as_the_prior_alone(frame):
    packed, colour = frame
    x, col = torch.from_numpy(packed)[None] * 2 - 1, torch.from_numpy(colour)[None]
    assert torch.equal(corrected_colour(col, torch.zeros(1, 12)), col)  # no correction: the colour, bit for bit
    plain = _seeded(PRESETS["tiny"].generator)
    with torch.no_grad():
        plain.d4[1].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))  # a trained-looking residual
    branched = _seeded(TINY_BRANCH)
    missing, unexpected = branched.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("colour_branch.") for k in missing)
    assert float(branched.colour_branch.head.weight.detach().abs().max()) == 0.0
    thumb = frame_thumbnail(x)
    plain.eval(), branched.eval()  # eval: spectral norm runs no power iteration between the calls
    with torch.no_grad():
        want = plain.rgb(x, col)
        torch.testing.assert_close(branched.rgb(x, col, thumb), want, rtol=0, atol=0)
        torch.testing.assert_close(branched.rgb(x, col), want, rtol=0, atol=0)  # the raw's own thumbnail
        torch.testing.assert_close(branched(x, col, thumb)[0], plain(x, col)[0], rtol=0, atol=0)


def test_the_branch_needs_the_prior_and_old_configs_load_without_it():
    with pytest.raises(FieldError, match="GeneratorConfig.colour_branch: global corrects the colour prior's colour"):
        GeneratorConfig(colour_branch="global")  # the paper's network has no prior
    with pytest.raises(FieldError, match='"local" is not one of none, global'):
        GeneratorConfig(prior="profile", colour_branch="local")
    old = PRESETS["tiny"].generator.to_json()
    del old["colour_branch"]  # a checkpoint's config of before the branch
    cfg = GeneratorConfig.from_json(old)
    assert cfg.colour_branch == "none" and cfg == PRESETS["tiny"].generator
    g = Generator(cfg)
    g.load_state_dict(_seeded(PRESETS["tiny"].generator).state_dict())
    assert g.colour_branch is None
    assert GeneratorConfig.from_json(TINY_BRANCH.to_json()) == TINY_BRANCH


def _trained_looking() -> Generator:
    """The tiny generator with its branch and residual head drawn at random, as after training."""
    g = _seeded(TINY_BRANCH)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        g.d4[1].weight.normal_(0, 0.02, generator=gen)
        g.colour_branch.head.weight.normal_(0, 0.01, generator=gen)
        g.colour_branch.head.bias.normal_(0, 0.01, generator=gen)
    return fold_spectral_norm(g.eval())


def test_tiles_take_the_whole_frames_thumbnail_and_equal_one_pass(frame):
    packed, colour = frame
    g = _trained_looking()
    x, col = torch.from_numpy(packed)[None] * 2 - 1, torch.from_numpy(colour)[None]
    with torch.no_grad():
        changed = g.colour_branch(frame_thumbnail(x), col)
    assert float((changed - col).abs().max()) > 0.05  # the branch does move the colour
    whole = run_whole(g, packed, colour=colour)
    tiled = run_tiled(g, packed, TileConfig(tile=64, overlap=24), colour=colour)
    assert tiled.shape == whole.shape == (3, 96, 128)  # the tiny preset's output scale 1
    assert float((tiled - whole).abs().max()) * 255 < 1.0
    # control: a tile given its own thumbnail would get another colour than the frame's
    tile = x[..., :64, :64]
    with torch.no_grad():
        own, frames = g.rgb(tile, col), g.rgb(tile, col, frame_thumbnail(x))
    assert float((frames.clamp(-1, 1) - whole[None, :, :64, :64] * 2 + 1).abs().mean()) * 127.5 < 1.0
    assert float((own - frames).abs().mean()) * 127.5 > 1.0


def test_the_shards_thumbnail_is_the_one_the_model_takes_of_a_frame(frame):
    packed, _ = frame
    frame16 = np.rint(packed * 65535.0).astype(np.uint16)
    stored = bayer.thumbnail(frame16)  # the shards stage, before its rounding to uint16
    model = frame_thumbnail(torch.from_numpy(frame16.astype(np.float32) / 65535.0)[None])[0].double().numpy() * 65535
    assert stored.shape == (4, bayer.THUMB_SIZE, bayer.THUMB_SIZE)
    assert np.abs(stored - model).max() < 0.05  # float32 against float64 means, in uint16 steps


# -- the branch learns -------------------------------------------------------------------------------

def _cast_samples(n: int, seed: int, size: int = 16) -> dict[str, torch.Tensor]:
    """Patches of frames each under its own light (``synth.illuminant_gains``): the RAW carries the
    light's cast, the target does not, and the colour given is one camera's fixed white balance."""
    rng = np.random.default_rng(seed)
    scenes = [synth.scene(name, (192, 192)) for name in synth.SCENES]
    raws, rgbs, thumbs = [], [], []
    for i in range(n):
        img = scenes[i % len(scenes)]
        cam = synth.Camera(wb_gains=synth.illuminant_gains(rng))
        frame = bayer.normalize_packed(bayer.planes(synth.capture(img, cam)), cam.black, cam.white, np.float32)
        y, x = (int(v) for v in rng.integers(0, 96 - size, 2))
        raws.append(frame[:, y : y + size, x : x + size])
        crop = img[2 * y : 2 * (y + size), 2 * x : 2 * (x + size)].astype(np.float32)
        rgbs.append(develop.area_downsample(crop).transpose(2, 0, 1) / 255.0)
        thumbs.append(bayer.thumbnail(frame))
    cam = synth.Camera()
    colour = develop.frame_colour(frame, np.asarray(cam.wb_gains), develop.cam_to_srgb(np.asarray(cam.xyz_to_cam)))

    def model(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(a)).float() * 2 - 1

    return {"raw": model(raws), "rgb": model(rgbs), "thumb": model(thumbs),
            "colour": torch.from_numpy(colour).float().expand(n, 12)}


def _colour_error(g: Generator, data: dict[str, torch.Tensor]) -> float:
    """Mean absolute difference of each image's mean colour from its target's (8-bit levels)."""
    with torch.no_grad():
        out = g.rgb(data["raw"], data["colour"], data["thumb"]).clamp(-1, 1)
    return float((out.mean(dim=(2, 3)) - data["rgb"].mean(dim=(2, 3))).abs().mean()) * 127.5


def test_the_branch_learns_per_image_light_casts():
    torch.set_num_threads(1)  # seconds either way; one thread: the same numbers on every machine
    train, held_out = _cast_samples(64, 0), _cast_samples(16, 1)
    cfg = GeneratorConfig(base=8, res_blocks=1, saliency_width=8, norm="none", prior="profile",
                          colour_branch="global")
    g = _seeded(cfg)
    opt = torch.optim.Adam(g.colour_branch.parameters(), lr=5e-4)  # the tiny preset's rate; the rest held
    errors = [_colour_error(g, held_out)]
    for step in range(1, 201):
        loss = F.l1_loss(g.rgb(train["raw"], train["colour"], train["thumb"]), train["rgb"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            errors.append(_colour_error(g, held_out))
    assert errors[0] > 7.0  # the fixed white balance leaves each light's cast
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7 * errors[0], errors
