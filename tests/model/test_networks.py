"""Generator and discriminator: the paper's sizes, shapes at both scales, init, spectral-norm folding."""

from __future__ import annotations

import pytest
import torch

from raw2rgb.model import discriminator as dmod
from raw2rgb.model import generator as gmod
from raw2rgb.model.discriminator import Discriminator, DiscriminatorConfig
from raw2rgb.model.generator import Generator, GeneratorConfig
from raw2rgb.model.presets import PRESETS


def test_paper_parameter_counts():
    assert gmod.count_parameters(Generator()) == gmod.PAPER_PARAMETERS == 24_352_448
    assert gmod.count_parameters(Discriminator()) == dmod.PAPER_PARAMETERS == 8_151_488


def test_paper_shapes_at_224():
    g, d = Generator(), Discriminator()
    x = torch.rand(1, 4, 224, 224) * 2 - 1
    with torch.no_grad():
        rgb, sal = g(x)
        assert rgb.shape == (1, 3, 224, 224) and sal.shape == (1, 1, 224, 224)
        assert d(x, rgb).shape == (1, 1, 26, 26)  # the paper's label map, not hard-coded here
    assert rgb.abs().max() <= 1 and 0 <= sal.min() and sal.max() <= 1


COLOUR = torch.tensor([[2.0, 1.0, 1.6, 1.7, -0.9, 0.2, 0.0, 1.3, -0.4, 0.0, -0.3, 1.3]])


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("hw", [(32, 48), (64, 40), (56, 56)])
@pytest.mark.parametrize("norm,prior", [("none", "profile"), ("instance", "none")])
def test_tiny_shapes(scale, hw, norm, prior):
    cfg = GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "scale": scale, "norm": norm, "prior": prior})
    g, d = Generator(cfg), Discriminator(PRESETS["tiny"].discriminator)
    x = torch.rand(2, 4, *hw) * 2 - 1
    colour = COLOUR.expand(2, 12) if prior == "profile" else None
    rgb, sal = g(x, colour)
    assert rgb.shape == (2, 3, scale * hw[0], scale * hw[1])
    assert sal.shape == (2, 1, scale * hw[0], scale * hw[1])
    assert g.rgb(x, colour).shape == rgb.shape
    assert len(gmod.norms(g)) == (0 if norm == "none" else 16 + (scale == 2))  # E2-4, 2 res, D1-3, 8 in G2, D_up
    score = d(x, rgb)
    # a PatchGAN map: three stride-2 stages (/8), then two 4×4 convs with padding 1 (−1 each)
    assert score.shape == (2, 1, scale * hw[0] // 8 - 2, scale * hw[1] // 8 - 2)


def test_bad_input_shape_is_named():
    g = Generator(PRESETS["tiny"].generator)
    with pytest.raises(ValueError, match=r"\(1, 4, 30, 32\)"):
        g(torch.zeros(1, 4, 30, 32))
    with pytest.raises(ValueError, match="1 or 2 times"):
        Discriminator(DiscriminatorConfig(8))(torch.zeros(1, 4, 32, 32), torch.zeros(1, 3, 48, 48))


def test_init_reaches_every_conv():
    """N(0, 0.02) on the trainable tensor under spectral norm, for every conv of G and D."""
    for net in (Generator(), Discriminator()):
        gmod.init_weights(net, 0.02, torch.Generator().manual_seed(0))
        convs = gmod.convs(net)
        assert len(convs) == (25 if isinstance(net, Generator) else 10)
        for c in convs:
            std = float(c.parametrizations.weight.original.detach().std())
            assert abs(std - 0.02) / 0.02 < 0.10, (c, std)


def test_fold_spectral_norm_keeps_outputs_and_drops_parametrisations():
    torch.manual_seed(0)
    g = Generator(PRESETS["tiny"].generator)
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        g.d4[1].weight.normal_(0, 0.02)  # the residual head starts at zero: as after training
    g.train()
    g(x, COLOUR)  # one power iteration, as in training
    g.eval()
    with torch.no_grad():
        before = g.rgb(x, COLOUR)
        gmod.fold_spectral_norm(g)
        after = g.rgb(x, COLOUR)
    assert not any(hasattr(c, "parametrizations") for c in gmod.convs(g))
    assert torch.allclose(before, after, atol=1e-6)


def test_frame_norm_collect_equals_instance_norm_on_one_image_and_fixed_reuses():
    x = torch.randn(1, 5, 8, 8) * 3 + 2
    n = gmod.FrameNorm()
    ref = torch.nn.functional.instance_norm(x)
    n.mode = "collect"
    assert torch.allclose(n(x), ref, atol=1e-5)
    n.mode = "fixed"
    y = torch.randn(1, 5, 4, 4)
    assert torch.allclose(n(y), (y - x.mean((0, 2, 3))[None, :, None, None])
                          / torch.sqrt(x.var((0, 2, 3), unbiased=False) + 1e-5)[None, :, None, None], atol=1e-5)


@pytest.mark.parametrize("hw", [(6, 9), (7, 4), (28, 28)])
def test_sub_pixel_up_block_equals_upsample_then_conv(hw):
    """The decoder's Up block runs the 3×3 conv on the low-resolution input with per-phase summed
    taps; it must equal nearest ×2 → reflection pad → conv3 (→ norm → LeakyReLU)."""
    torch.manual_seed(0)
    up = gmod.Up(8, 5)
    x = torch.randn(2, 8, *hw, requires_grad=True)
    out, ref = up(x), up.reference(x)
    assert out.shape == (2, 5, 2 * hw[0], 2 * hw[1])
    assert torch.allclose(out, ref, atol=1e-5)
    g_out = torch.autograd.grad(out.square().sum(), x)[0]
    g_ref = torch.autograd.grad(ref.square().sum(), x)[0]
    assert torch.allclose(g_out, g_ref, atol=1e-4)
