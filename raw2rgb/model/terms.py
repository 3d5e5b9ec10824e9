"""The generator's objective: its loss terms (:data:`LOSS_TERMS`), their weights (:class:`LossWeights`)
and the weighted total (:func:`objective`), as functions of tensors. No torch at import: ``raw2rgb
train --help`` reads the weights (``TrainConfig.weights``) and the terms' help lines without it; a
term's function uses tensor methods and imports torch itself when it needs more.

Eq. 1 ``L_rgb = |G1(x) − y|₁`` (always, weight 1); eq. 2 (attention) ``L_A = |G1(x)⊙G2(x) − y⊙s|₁``;
eqs. 3–4 (LSGAN) ``L_G = ½E[(D(x, G1(x)) − 1)²]``, ``L_D = ½E[(D(x, y) − 1)²] + ½E[D(x, G1(x))²]``;
perceptual ``|φ(G1(x)) − φ(y)|₁`` with φ = VGG16 conv4_3 (``model/losses.py``).

A new term is one entry and one field: ``LOSS_TERMS.add(NAME, LossTerm(help, compute, stages))``
below, and a field ``NAME: float = weight(NAME, default)`` in :class:`LossWeights` (its weight, in
configs as ``weights: {NAME: …}``). The total, the CLI's ``--NAME-weight`` option, its help line and
the logged terms and training curves (:data:`TERMS`) all read them from here; a weight without a
registered term is refused when the config is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raw2rgb.config import FieldError, JsonConfig, checked
from raw2rgb.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn


# -- the paper's equations, with tensor methods only --------------------------------------------------

def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def attention(rgb: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, target_saliency: torch.Tensor
              ) -> torch.Tensor:
    """Eq. 2: L1 between the output weighted by the predicted map and the target weighted by
    SalGAN's map. Maps are (B, 1, H, W) in [0, 1] and broadcast over the colour channels."""
    return l1(rgb * saliency, target * target_saliency)


def lsgan_g(fake_score: torch.Tensor) -> torch.Tensor:
    """Eq. 3, the generator's side: ``½E[(D(x, G1(x)) − 1)²]``."""
    return 0.5 * ((fake_score.float() - 1.0) ** 2).mean()


def lsgan_d(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """Eq. 4, the discriminator's loss: ``½E[(D(x, y) − 1)²] + ½E[D(x, G1(x))²]``."""
    return 0.5 * ((real_score.float() - 1.0) ** 2).mean() + 0.5 * (fake_score.float() ** 2).mean()


# -- the terms ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepTensors:
    """What a generator term is computed from in one training step: the batch's raw ``x``, target
    ``y`` and its saliency ``s``; G's ``rgb`` and ``saliency``; the stage; the discriminator ``D``
    (stage 2) and the perceptual module (None without VGG16)."""

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor
    rgb: torch.Tensor
    saliency: torch.Tensor
    stage: int
    D: nn.Module | None = None
    perceptual: nn.Module | None = None


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the generator's total: ``help`` (one line: what it is), ``compute(t)``
    its value from a step's :class:`StepTensors` (None where the step lacks what it needs: the
    perceptual term without VGG16), ``stages`` the training stages that compute it."""

    help: str
    compute: Callable[[StepTensors], Any]
    stages: tuple[int, ...] = (1, 2)


LOSS_TERMS: Registry[LossTerm] = Registry("loss term")


def _attention(t: StepTensors) -> torch.Tensor:
    return attention(t.rgb.float(), t.saliency.float(), t.y, t.s)


def _adversarial(t: StepTensors) -> torch.Tensor | None:
    if t.D is None:
        return None
    # plain D (no DDP sync for this pass) in eval mode: its spectral norms reuse this step's power
    # iteration (run in the D step) instead of iterating a second time; D has no other train/eval
    # difference (InstanceNorm without running statistics)
    t.D.eval()
    try:
        return lsgan_g(t.D(t.x, t.rgb))
    finally:
        t.D.train()


def _perceptual(t: StepTensors) -> torch.Tensor | None:
    return None if t.perceptual is None else t.perceptual(t.rgb, t.y)


LOSS_TERMS.add("attention", LossTerm(
    "eq. 2, L1 of output and target each weighted by its saliency map (the saliency head learns only through it)",
    _attention))
LOSS_TERMS.add("adversarial", LossTerm("eq. 3, LSGAN against the discriminator", _adversarial, stages=(2,)))
LOSS_TERMS.add("perceptual", LossTerm(
    "L1 of VGG16 conv4_3 features of output and target (0: no VGG16 needed)", _perceptual, stages=(2,)))


def weight(name: str, default: float) -> Any:
    """The :class:`LossWeights` field of the term ``name``: a weight ≥ 0, its help line the term's."""
    term = LOSS_TERMS[name]
    when = "both stages" if len(term.stages) > 1 else f"stage {term.stages[0]}"
    return checked(default, min=0, metavar="W", help=f"Weight of the {name} term, {when}: {term.help}.")


@dataclass(frozen=True)
class LossWeights(JsonConfig):
    """The weight of each term in the generator's total, beside ``L_rgb`` (weight 1); one field per
    :data:`LOSS_TERMS` entry, under its name. Defaults are the paper's stage-2 weights (docs/paper.md).

    Raises:
        FieldError: on construction, a field without a registered term (it would never be computed).
    """

    attention: float = weight("attention", 0.5)
    adversarial: float = weight("adversarial", 0.01)
    perceptual: float = weight("perceptual", 1.0)

    def _check_together(self) -> None:
        for f in dataclasses.fields(self):
            if f.name not in LOSS_TERMS:
                raise FieldError(type(self).__name__, (f.name,), f"no loss term {f.name!r} is registered "
                                 f"(model/terms.py LOSS_TERMS: {', '.join(LOSS_TERMS)})")


def objective(weights: LossWeights, t: StepTensors) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The generator's terms (``rgb``, and each term of ``weights`` that the step's stage computes
    and has the tensors for) and their weighted total (eq. 1 plus the weighted terms)."""
    terms = {"rgb": l1(t.rgb.float(), t.y)}
    for f in dataclasses.fields(weights):
        term = LOSS_TERMS[f.name]
        value = term.compute(t) if t.stage in term.stages else None
        if value is not None:
            terms[f.name] = value
    return terms, weighted_total(terms, weights)


def weighted_total(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """``L_rgb`` plus each weighted term present in ``terms``."""
    total = terms["rgb"]
    for f in dataclasses.fields(weights):
        if f.name in terms:
            total = total + getattr(weights, f.name) * terms[f.name]
    return total


class LoggedTerms(Mapping[str, str]):
    """Every logged term and its label, read from :data:`LOSS_TERMS` when asked (a term registered
    later is logged and plotted too): ``rgb``, each weighted term, the discriminator's loss ``d``
    and the ``total``."""

    def _labels(self) -> dict[str, str]:
        return {"rgb": "L1 (rgb)", **{name: name for name in LOSS_TERMS}, "d": "discriminator", "total": "total"}

    def __getitem__(self, name: str) -> str:
        return self._labels()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels())

    def __len__(self) -> int:
        return len(self._labels())


TERMS = LoggedTerms()
