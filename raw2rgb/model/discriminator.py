"""The discriminator: a conditional PatchGAN on (raw, rgb), any input size.

Every conv: spectral norm, no bias, reflection padding; InstanceNorm except on the first and
last; LeakyReLU(0.2) except on the last. At 224² it gives a 26×26 map of scores; the paper's
code hard-coded that size for its labels, here the labels take the map's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raw2rgb.model.generator import ReflectPad, conv
from raw2rgb.model.presets import DiscriminatorConfig

PAPER_PARAMETERS = 8_151_488


class _Pad1(nn.Module):
    """conv4/1 with padding 1 (the size drops by one): reflection pad 1 on every side."""

    def __init__(self, cin: int, cout: int, norm: bool, act: bool) -> None:
        super().__init__()
        self.body = conv(cin, cout, 4, norm=norm, act=act)
        self.body[0] = ReflectPad(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Discriminator(nn.Module):
    """Scores (raw, rgb) pairs per patch. raw (B, 4, h, w) and rgb (B, 3, s·h, s·w), both in
    [-1, 1]; at scale 2 the raw is upsampled (nearest) to the RGB size."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.base
        layers = [conv(7, b, 1, norm=False), conv(b, b, 7)]
        ch = b
        for _ in range(3):
            layers += [conv(ch, 2 * ch, 4, stride=2), conv(2 * ch, 2 * ch, 3)]
            ch *= 2
        layers += [_Pad1(ch, ch // 2, norm=True, act=True), _Pad1(ch // 2, 1, norm=False, act=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, raw: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        if raw.shape[-2:] != rgb.shape[-2:]:
            if rgb.shape[-2] != 2 * raw.shape[-2] or rgb.shape[-1] != 2 * raw.shape[-1]:
                raise ValueError(f"raw {tuple(raw.shape)} and rgb {tuple(rgb.shape)}: the RGB is 1 or 2 times "
                                 "the raw's size")
            raw = F.interpolate(raw, scale_factor=2.0, mode="nearest")
        return self.net(torch.cat([raw, rgb], 1))
