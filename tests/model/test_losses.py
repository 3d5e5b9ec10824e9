"""The losses: known answers, the weighted total, one list of terms."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raw2rgb.config import FieldError
from raw2rgb.model import losses
from raw2rgb.model.terms import (
    LOSS_TERMS,
    TERMS,
    LossTerm,
    LossWeights,
    attention,
    l1,
    lsgan_d,
    lsgan_g,
    weighted_total,
)


def test_l1_and_attention_known_answers():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert float(l1(a, b)) == 0.5
    rgb, target = torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    pred, sal = torch.full((1, 1, 2, 2), 0.25), torch.full((1, 1, 2, 2), 0.75)
    assert float(attention(rgb, pred, target, sal)) == pytest.approx(0.5)  # |0.25 − 0.75|, every channel


def test_lsgan_terms_known_answers():
    real, fake = torch.full((2, 1, 3, 3), 1.0), torch.full((2, 1, 3, 3), 0.0)
    assert float(lsgan_d(real, fake)) == 0.0  # a perfect discriminator
    assert float(lsgan_g(fake)) == 0.5  # ½(0 − 1)²
    assert float(lsgan_d(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))) == 1.0  # ½ + ½


def test_weighted_total_reads_the_weights_and_skips_absent_terms():
    terms = {"rgb": torch.tensor(1.0), "attention": torch.tensor(2.0), "adversarial": torch.tensor(4.0)}
    w = LossWeights(attention=0.5, adversarial=0.25, perceptual=100.0)
    assert float(weighted_total(terms, w)) == 1.0 + 0.5 * 2.0 + 0.25 * 4.0  # no perceptual term: stage 1


def test_every_weighted_term_is_listed_once():
    names = [f.name for f in dataclasses.fields(LossWeights)]
    assert names == list(LOSS_TERMS) and list(TERMS) == ["rgb", *names, "d", "total"]
    assert {n: LOSS_TERMS[n].stages for n in names} == {"attention": (1, 2), "adversarial": (2,), "perceptual": (2,)}
    assert LossWeights() == LossWeights(attention=0.5, adversarial=0.01, perceptual=1.0)  # the paper


def test_a_term_is_registered_once_and_a_weight_needs_its_term():
    with pytest.raises(ValueError, match="already registered"):
        LOSS_TERMS.add("attention", LossTerm("again", lambda t: None))

    @dataclasses.dataclass(frozen=True)
    class Weights(LossWeights):
        sharpness: float = 1.0

    with pytest.raises(FieldError, match=r"Weights\.sharpness: no loss term 'sharpness' is registered"):
        Weights()  # refused when the config is made, not at the first step


def test_the_objective_imports_no_torch():
    import subprocess
    import sys

    probe = "import sys, raw2rgb.model.terms, raw2rgb.model.recipe; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_perceptual_is_zero_for_equal_images_and_positive_otherwise():
    torch.manual_seed(0)
    from torchvision.models import vgg16

    p = losses.Perceptual(vgg16(weights=None).features[: losses.VGG_CONV4_3].eval())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert float(p(x, x)) == 0.0 and float(p(x, -x)) > 0
