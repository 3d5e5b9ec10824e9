"""The colour prior: the classical pipeline followed by a fitted colour profile (poly3 or LUT), in torch, as a fixed and
differentiable front end of the generator (docs/architecture.md: baselines).

A generator that must learn each camera's colour and tone from scratch spends its capacity and its
training time on what a least-squares profile gets in a second. With the prior the network sees
the raw and the prior's rendering and learns only the residual: what a function of each pixel's
colour cannot do (demosaicing, noise, sharpening, local contrast). It is the same computation as
``pipeline/develop.py`` (white balance, demosaicing, camera → sRGB matrix, sRGB curve) followed
by ``pipeline/profile.py``'s ``apply`` — a test holds them equal — and it is pointwise but for
the 3×3 demosaicing, so tiles stay seamless.

The prior keeps the profile's white-balance rule (and the ``dataset`` rule's gains) beside its
coefficients, so a checkpoint says how to white-balance a file without metadata: the colour it
takes is made by ``whitebalance.colour_vector`` with that rule, in training, ``evaluate`` and
``convert`` alike. Fitting the profile and the detail filter on shards is ``model/prior_fit.py``'s:
inference, which builds the prior, loads no training data code.

:class:`ColourBranch` (``GeneratorConfig.colour_branch="global"``) corrects that colour per image,
for datasets whose light changes from scene to scene and whose files say nothing of it (ZRR): a
fixed white-balance rule cannot know each scene's light, a network looking at the whole frame can
(LiteISPNet's global colour mapping, Zhang et al. 2021, conditions its colour on a downsampled
input in the same spirit). It sees the frame's thumbnail, never a tile, so every tile of a frame
gets the same colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raw2rgb.pipeline.bayer import THUMB_SIZE
from raw2rgb.pipeline.profile import DEFAULT_LUT_SIZE, MODELS, Profile, lut_corners, poly3_terms
from raw2rgb.pipeline.whitebalance import LEGACY_RULE, RULES, WhiteBalance

POLY3_TERMS = 20


def demosaic_bilinear(p: torch.Tensor) -> torch.Tensor:
    """Packed planes (B, 4, h, w) R, G1, B, G2 in [0, 1] → (B, 3, 2h, 2w): ``develop.demosaic_planes``
    (each missing sample the mean of its nearest same-colour neighbours, edges repeated)."""
    b, _, h, w = p.shape
    pp = F.pad(p, (1, 1, 1, 1), mode="replicate")

    def at(c: int, dy: int, dx: int) -> torch.Tensor:
        return pp[:, c, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]

    r, g1, bl, g2 = 0, 1, 2, 3
    # the four sites of each 2×2 cell: R (0, 0), G1 (0, 1), G2 (1, 0), B (1, 1)
    red = [at(r, 0, 0), (at(r, 0, 0) + at(r, 0, 1)) * 0.5, (at(r, 0, 0) + at(r, 1, 0)) * 0.5,
           (at(r, 0, 0) + at(r, 0, 1) + at(r, 1, 0) + at(r, 1, 1)) * 0.25]
    green = [(at(g2, -1, 0) + at(g2, 0, 0) + at(g1, 0, -1) + at(g1, 0, 0)) * 0.25, at(g1, 0, 0), at(g2, 0, 0),
             (at(g1, 0, 0) + at(g1, 1, 0) + at(g2, 0, 0) + at(g2, 0, 1)) * 0.25]
    blue = [(at(bl, -1, -1) + at(bl, -1, 0) + at(bl, 0, -1) + at(bl, 0, 0)) * 0.25,
            (at(bl, -1, 0) + at(bl, 0, 0)) * 0.5, (at(bl, 0, -1) + at(bl, 0, 0)) * 0.5, at(bl, 0, 0)]
    sites = torch.stack([torch.stack(c, 1) for c in (red, green, blue)], 1)  # (B, 3, 4 sites, h, w)
    return F.pixel_shuffle(sites.reshape(b, 12, h, w), 2)


def classical(raw: torch.Tensor, colour: torch.Tensor, scale: int, extended: bool | torch.Tensor = False
              ) -> torch.Tensor:
    """``develop.develop`` in torch: model-range raw (B, 4, h, w) and per-image colour (B, 12: white
    balance R, G, B, then the camera → sRGB matrix row by row) → sRGB (B, 3, s·h, s·w) in [0, 1]; with
    ``extended``, before the gamut clip, in [-1, 1] (``develop.GAMUTS``)."""
    p = ((raw.float() + 1) * 0.5).clamp(0, 1)
    if scale == 1:
        cam = torch.stack([p[:, 0], (p[:, 1] + p[:, 3]) * 0.5, p[:, 2]], 1)
    else:
        cam = demosaic_bilinear(p)
    colour = colour.float()
    cam = (cam * colour[:, :3, None, None]).clamp(0, 1)
    lin = torch.einsum("bij,bjhw->bihw", colour[:, 3:].reshape(-1, 3, 3), cam)
    # the floor is 0 (clipped) or -1 (extended), a tensor op either way: no branch on a buffer, so the
    # prior exports (torch.export, ONNX) whichever it holds; the sign of a clipped value is 0 or 1
    floor = -torch.as_tensor(extended, dtype=lin.dtype, device=lin.device)
    lin = torch.maximum(lin, floor).clamp(max=1)
    mag = lin.abs()
    encoded = torch.where(mag <= 0.0031308, 12.92 * mag, 1.055 * mag.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return torch.sign(lin) * encoded


def lut_trilinear(x: torch.Tensor, nodes: torch.Tensor, n: int) -> torch.Tensor:
    """``profile.apply`` of a LUT in torch: sRGB (B, 3, H, W) in [0, 1] and nodes (n³, 3) → (B, 3, H, W),
    trilinear between the 8 nodes around each pixel (gathers: exportable)."""
    corners = lut_corners(x[:, 0], x[:, 1], x[:, 2], n)
    return sum(w[:, None] * nodes[idx.long()].permute(0, 3, 1, 2) for idx, w in corners)


class ColourPrior(nn.Module):
    """The classical rendering followed by a fitted colour profile (``pipeline/profile.py``): a cubic
    (``poly3``, 20×3 coefficients) or a 3-D LUT (``lut``, n³×3 nodes); with ``detail`` = k > 0, then
    a fitted k×k linear filter (3 → 3 channels and a bias: ``prior_fit.fit_detail``), the part of a camera's
    detail rendering — capture sharpening, the blur of its noise reduction — that is linear. The
    coefficients and the filter are buffers: saved with the generator, fixed in training."""

    def __init__(self, scale: int, model: str = "poly3", lut_size: int = DEFAULT_LUT_SIZE, detail: int = 0) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"a colour prior is one of {MODELS}, got {model!r}")
        if detail < 0 or (detail and detail % 2 == 0):
            raise ValueError(f"a detail filter is k×k with k odd (0: none), got {detail}")
        self.scale, self.model, self.lut_size, self.detail = scale, model, lut_size, detail
        if model == "poly3":
            identity = torch.zeros(POLY3_TERMS, 3)
            identity[1:4] = torch.eye(3)  # terms 1, r, g, b, …: the identity profile until one is fitted
        else:
            axis = torch.linspace(0, 1, lut_size)
            identity = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("coefficients", identity)
        # the profile's white-balance rule (an index into RULES) and the dataset rule's gains (NaN: none)
        self.register_buffer("wb_rule", torch.tensor(RULES.index(WhiteBalance().rule)))
        self.register_buffer("wb_gains", torch.full((3,), float("nan")))
        # 1: the profile takes the classical rendering before its gamut clip (develop.GAMUTS), as fitted now
        self.register_buffer("extended", torch.tensor(1))
        if detail:  # the identity until one is fitted
            weight = torch.zeros(3, 3, detail, detail)
            weight[[0, 1, 2], [0, 1, 2], detail // 2, detail // 2] = 1
            self.register_buffer("detail_weight", weight)
            self.register_buffer("detail_bias", torch.zeros(3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints of before the white-balance rules: their models converted with a whole frame's grey world
        state_dict.setdefault(prefix + "wb_rule", torch.tensor(RULES.index(LEGACY_RULE)))
        state_dict.setdefault(prefix + "wb_gains", torch.full((3,), float("nan")))
        # checkpoints of before the extended gamut: their profile was fitted on the clipped rendering
        state_dict.setdefault(prefix + "extended", torch.tensor(0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def white_balance(self) -> WhiteBalance:
        """The white-balance rule (and gains) of the profile this prior was set to."""
        gains = self.wb_gains.tolist()
        return WhiteBalance(RULES[int(self.wb_rule)], None if any(g != g for g in gains) else tuple(gains))

    def set_profile(self, profile: Profile) -> None:
        def kind(model: str, lut_size: int, scale: int) -> str:
            return f"{model}{f' {lut_size}³' if model == 'lut' else ''} profile at scale {scale}"

        want, got = kind(self.model, self.lut_size, self.scale), kind(profile.model, profile.lut_size, profile.scale)
        if got != want:
            raise ValueError(f"the colour prior takes a {want}, got a {got}")
        with torch.no_grad():
            self.coefficients.copy_(torch.tensor(profile.coefficients, dtype=torch.float32))
            self.wb_rule.fill_(RULES.index(profile.white_balance.rule))
            self.extended.fill_(int(profile.gamut == "extended"))
            gains = profile.white_balance.gains
            self.wb_gains.copy_(torch.tensor(gains if gains is not None else [float("nan")] * 3))

    def set_detail(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if not self.detail or weight.shape != self.detail_weight.shape:
            raise ValueError(f"the colour prior takes a {self.detail}×{self.detail} detail filter, got "
                             f"{tuple(weight.shape)}")
        with torch.no_grad():
            self.detail_weight.copy_(weight)
            self.detail_bias.copy_(bias)

    def profiled(self, raw: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """The classical rendering and the colour profile, without the detail filter: (B, 3, s·h, s·w) in [0, 1]."""
        x = classical(raw, colour, self.scale, extended=self.extended)
        if self.model == "poly3":
            terms = torch.stack(poly3_terms(x[:, 0], x[:, 1], x[:, 2]), 1)  # (B, 20, H, W)
            out = torch.einsum("bkhw,kc->bchw", terms, self.coefficients.float())
        else:
            out = lut_trilinear(x, self.coefficients.float(), self.lut_size)
        return out.clamp(0, 1)

    def forward(self, raw: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) raw in [-1, 1] and (B, 12) colour → (B, 3, s·h, s·w) in [-1, 1]."""
        out = self.profiled(raw, colour)
        if self.detail:
            pad = self.detail // 2  # edges repeated, as the demosaicing does: a tile's edge is a frame's edge
            out = F.conv2d(F.pad(out, (pad,) * 4, mode="replicate"), self.detail_weight.float(),
                           self.detail_bias.float()).clamp(0, 1)
        return out * 2 - 1


def model_white_balance(g: nn.Module) -> WhiteBalance:
    """How a generator white-balances a file without metadata: its colour prior's rule and gains; for
    a generator without a prior (which takes no colour) a whole frame's grey world."""
    prior = getattr(g, "prior", None)
    return prior.white_balance() if isinstance(prior, ColourPrior) else WhiteBalance(LEGACY_RULE)


# -- the learned global colour branch ---------------------------------------------------------------

BRANCH_WIDTH = 16
LOG_FLOOR = 1e-3  # below the darkest level a 10-bit sensor records: log stays finite on black
# The head's weights are used times HEAD_GAIN (StyleGAN's equalised learning rate, turned up): a
# colour estimate needs weights of order one (a cast of c shifts the mean log chroma by log c), which
# Adam at the generator's learning rate (steps of about lr per weight) would take thousands of steps to reach.
HEAD_GAIN = 10.0


def corrected_colour(colour: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """A per-image correction (B, 12) applied to colours (B, 12): white-balance gains times
    exp(correction[:, :3]); the matrix M becomes (I + Δ)·M with Δ = correction[:, 3:] row by row
    (a change in the output's linear sRGB). A zero correction returns the colour bit for bit."""
    gains = colour[:, :3] * torch.exp(correction[:, :3])
    delta = correction[:, 3:].reshape(-1, 3, 3) + torch.eye(3, device=colour.device, dtype=colour.dtype)
    matrix = torch.bmm(delta, colour[:, 3:].reshape(-1, 3, 3))
    return torch.cat([gains, matrix.reshape(-1, 9)], 1)


def frame_thumbnail(raw: torch.Tensor, size: int = THUMB_SIZE) -> torch.Tensor:
    """The thumbnail a frame gives by itself: (B, 4, h, w) → (B, 4, size, size) area means
    (``bayer.thumbnail``'s bins, which the shards store)."""
    return F.adaptive_avg_pool2d(raw.float(), size)


class ColourBranch(nn.Module):
    """The frame's thumbnail (B, 4, T, T) in [-1, 1] and the colour the prior would take (B, 12) →
    a corrected colour (B, 12).

    The thumbnail is white-balanced by the colour's gains first, so the branch predicts what the
    rule left over, whatever the rule. It sees each plane linear and its log chroma (log of each plane
    less that of the greens: a light's cast is a constant there, and brightness cancels) through two
    stride-2 3×3 convs with LeakyReLU, averaged over the frame, beside the inputs' own frame means
    (the grey-world statistics a colour-constancy estimate starts from); a linear layer gives 3
    white-balance log-gains and a 3×3 matrix delta. That layer starts at zero: a fresh branch leaves
    the colour exactly as it was. The convs have no bias, so ``generator.init_weights`` draws all
    their weights from its seeded generator.
    """

    def __init__(self, width: int = BRANCH_WIDTH) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(8, width, 3, 2, 1, bias=False), nn.LeakyReLU(0.2),
                                      nn.Conv2d(width, width, 3, 2, 1, bias=False), nn.LeakyReLU(0.2))
        self.head = nn.Linear(width + 8, 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, thumb: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        if thumb.ndim != 4 or thumb.shape[1] != 4 or thumb.shape[0] != colour.shape[0]:
            raise ValueError(f"the colour branch takes a thumbnail (B, 4, t, t) per colour (B, 12), got "
                             f"{tuple(thumb.shape)} and {tuple(colour.shape)}")
        p = ((thumb.float() + 1) * 0.5).clamp(0, 1) * colour[:, [0, 1, 2, 1], None, None].float()
        log = torch.log(p + LOG_FLOOR)
        chroma = log - (log[:, 1:2] + log[:, 3:4]) * 0.5
        x = torch.cat([p, chroma], 1)
        stats = torch.cat([self.features(x).mean(dim=(2, 3)), x.mean(dim=(2, 3))], 1)
        correction = F.linear(stats, self.head.weight * HEAD_GAIN, self.head.bias * HEAD_GAIN)
        return corrected_colour(colour.float(), correction)
