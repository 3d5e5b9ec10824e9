"""The generator: a U-Net with a residual bottleneck (G1, RAW → RGB) and its saliency decoder (G2).

The paper's published network, layer for layer (docs/paper.md). Every conv: reflection padding, no bias,
spectral norm, InstanceNorm without affine parameters and LeakyReLU(0.2) unless stated. The
normalisation layers are :class:`FrameNorm`, an InstanceNorm that can also take its statistics
jointly over a batch (``collect``) and then hold them (``fixed``): that is how tiled inference
gets the statistics of the whole frame (``model/infer.py``).

Two departures, raw2rgb's recommended configuration (``norm="none"``, ``prior="profile"``; the
presets ``standard`` and ``tiny``), chosen by measurement (benchmarks/quality.py): InstanceNorm
removes each image's global colour and brightness, which is what a RAW-to-RGB mapping must get
right, so it is left out; and a colour prior (``model/prior.py``: the classical pipeline, a
colour profile and a detail filter fitted on the train split) renders each image first, the network sees the raw and
that rendering and adds a residual whose last conv starts at zero — at step 0 the model is the
fitted profile, and training starts from there. The ``paper`` preset is the paper's network.

With ``colour_branch="global"`` (on top of the prior) a small network on a thumbnail of the whole
frame corrects the colour the prior takes, per image (``prior.ColourBranch``): for datasets whose
light changes from scene to scene without the files saying so. It starts at no correction.

Shapes: raw (B, 4, h, w) in [-1, 1] with h, w multiples of 8, and with a prior the frame's colour
(B, 12) (``develop.frame_colour``), with the branch the frame's thumbnail (B, 4, 32, 32) in [-1, 1]
(``bayer.thumbnail``; by default the raw's own) → rgb (B, 3, s·h, s·w) in [-1, 1] (with a prior: unbounded, the
caller clamps) and saliency (B, 1, s·h, s·w) in [0, 1]; s is the output scale (1 or 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from raw2rgb.model.presets import COLOUR_BRANCHES, NORMS, PRIOR_MODELS, PRIORS, GeneratorConfig  # noqa: F401
from raw2rgb.model.prior import ColourBranch, ColourPrior, frame_thumbnail

PAPER_PARAMETERS = 24_352_448
EPS = 1e-5


class FrameNorm(nn.Module):
    """InstanceNorm (no affine, biased variance, eps 1e-5) with two extra modes for tiled inference.

    - ``instance`` (default): each image by its own statistics, as ``nn.InstanceNorm2d``.
    - ``collect``: statistics per channel jointly over the batch and space — over the pixels where
      ``mask`` is 1 when a mask is set — stored, then used. A batch of tiles whose masks partition
      a frame is then normalised as the whole frame would be.
    - ``fixed``: the stored statistics, whatever the input.

    ``mask`` is (B, 1, H, W) at the network's input size; each layer takes it at its own size by
    nearest sampling, exact when the masked regions are aligned to the network's stride (8).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode = "instance"
        self.mask: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "instance":
            # F.instance_norm returns a contiguous tensor: every conv on a channels_last network would
            # then convert layouts. Elementwise ops keep the input's memory format; statistics in fp32.
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            return ((x - mean) * torch.rsqrt(var + EPS)).to(x.dtype)
        if self.mode == "collect":
            self.mean, self.var = self._statistics(x.float())
        if self.mean is None or self.var is None:
            raise RuntimeError("FrameNorm in fixed mode has no statistics (run a collect pass first)")
        out = x.float() - self.mean[None, :, None, None]  # one full-size temporary: inference memory
        return out.mul_(torch.rsqrt(self.var + EPS)[None, :, None, None]).to(x.dtype)

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask is None:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            return mean, var
        m = F.interpolate(self.mask.to(x.dtype), size=x.shape[-2:], mode="nearest")
        n = m.sum()
        mean = (x * m).sum(dim=(0, 2, 3)) / n
        var = (((x - mean[None, :, None, None]) ** 2) * m).sum(dim=(0, 2, 3)) / n
        return mean, var


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding by ``pad`` on every side, as ``F.pad(mode="reflect")``. On CUDA written with
    slices: the output keeps the input's memory format (the reflection kernel returns contiguous
    NCHW there, so a channels_last network converted layouts around every conv) and the backward is
    slicing rather than the kernel's atomic adds. On the CPU the kernel is faster (benchmarks/
    step_parts.py) and is kept."""
    if not x.is_cuda:
        return F.pad(x, (pad,) * 4, mode="reflect")
    return reflect_pad_slices(x, pad)


def reflect_pad_slices(x: torch.Tensor, pad: int) -> torch.Tensor:
    """:func:`reflect_pad` by slices and concatenation (what CUDA runs)."""
    x = torch.cat([x[:, :, 1 : pad + 1].flip(2), x, x[:, :, -pad - 1 : -1].flip(2)], dim=2)
    return torch.cat([x[..., 1 : pad + 1].flip(3), x, x[..., -pad - 1 : -1].flip(3)], dim=3)


class ReflectPad(nn.Module):
    """:func:`reflect_pad` as a layer (no state: checkpoints of ``nn.ReflectionPad2d`` networks load)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reflect_pad(x, self.pad)

    def extra_repr(self) -> str:
        return str(self.pad)


def conv(cin: int, cout: int, k: int, stride: int = 1, norm: bool = True, act: bool = True) -> nn.Sequential:
    """Reflection pad → spectral-norm conv (no bias) → [FrameNorm] → [LeakyReLU 0.2].

    Padding keeps the size at stride 1 and halves it at stride 2 (k = 4, pad 1)."""
    pad = (k - 1) // 2 if stride == 1 else (k - stride) // 2
    layers: list[nn.Module] = [ReflectPad(pad) if pad else nn.Identity(),
                               parametrizations.spectral_norm(nn.Conv2d(cin, cout, k, stride, bias=False))]
    if norm:
        layers.append(FrameNorm())
    if act:
        layers.append(nn.LeakyReLU(0.2, inplace=True))  # on a fresh tensor no backward needs
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """conv3 IN lrelu → conv3 (no norm, no act), plus the identity."""

    def __init__(self, ch: int, norm: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(ch, ch, 3, norm=norm), conv(ch, ch, 3, norm=False, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# Rows (and columns) of a 3×3 kernel that fall on each low-resolution row, for output phase 0 and
# 1 of a nearest ×2 upsampling: phase 0 sees rows i-1 (tap 0) and i (taps 1, 2); phase 1 sees
# rows i (taps 0, 1) and i+1 (tap 2).
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _edge_pad1(x: torch.Tensor) -> torch.Tensor:
    """Replicate padding by one pixel, written with slices: torch.compile's backward of
    ``F.pad(mode="replicate")`` fails on the strides it gets here (torch 2.14)."""
    x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
    return torch.cat([x[..., :1], x, x[..., -1:]], dim=3)


class Up(nn.Module):
    """Nearest ×2, then a conv block (reflection pad 1, conv3, norm, LeakyReLU).

    Computed without the ×2 tensor: a 3×3 conv over a nearest-upsampled image is, per output
    phase, a 2×2 conv over the original with summed taps (the sub-pixel identity), and reflection
    padding of the upsampled image is edge padding of the original. Same result, 2.25× fewer
    multiply-adds, and the 4× larger intermediate (the decoder's largest tensor) never exists.
    """

    def __init__(self, cin: int, cout: int, norm: bool = True) -> None:
        super().__init__()
        self.conv = conv(cin, cout, 3, norm=norm)
        # (phase, 2, 3): a buffer, so no host → device copy (and GPU sync) happens in the forward
        self.register_buffer("taps", torch.tensor(_PHASE_TAPS), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv[1].weight  # (cout, cin, 3, 3), spectral norm applied
        taps = self.taps.to(w.dtype)
        k = torch.einsum("ayi,ocij,bxj->aboc" "yx", taps, w, taps)  # (2, 2, cout, cin, 2, 2)
        cout, h, wd = w.shape[0], x.shape[-2], x.shape[-1]
        y = F.conv2d(_edge_pad1(x), k.reshape(4 * cout, *k.shape[3:]))
        y = y.view(y.shape[0], 2, 2, cout, h + 1, wd + 1)
        z = torch.stack([y[:, a, b, :, a : a + h, b : b + wd] for a in (0, 1) for b in (0, 1)], dim=2)
        out = F.pixel_shuffle(z.reshape(z.shape[0], 4 * cout, h, wd), 2)
        return self.conv[2:](out)  # norm, LeakyReLU

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain form, for tests: upsample, then the conv block."""
        return self.conv(_up(x))


class Generator(nn.Module):
    """G1 (RGB) and G2 (saliency) of the paper. ``forward`` returns (rgb, saliency);
    :meth:`rgb` runs G1 alone (inference needs nothing else)."""

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        if cfg.scale not in (1, 2):
            raise ValueError(f"output scale must be 1 or 2, got {cfg.scale}")
        if cfg.norm not in NORMS or cfg.prior not in PRIORS or cfg.prior_model not in PRIOR_MODELS:
            raise ValueError(f"norm must be one of {NORMS}, prior one of {PRIORS} and prior_model one of "
                             f"{PRIOR_MODELS}, got {cfg.norm}, {cfg.prior}, {cfg.prior_model}")
        self.cfg = cfg
        b, sw, n = cfg.base, cfg.saliency_width, cfg.norm == "instance"
        # With a prior, E1 also sees the prior's rendering, folded onto the packed grid (3·s² channels).
        self.prior = ColourPrior(cfg.scale, cfg.prior_model, detail=cfg.detail_filter) if cfg.prior == "profile" \
            else None
        self.colour_branch = ColourBranch() if cfg.colour_branch == "global" and self.prior is not None else None
        self.e1 = conv(4 + (3 * cfg.scale**2 if self.prior is not None else 0), b, 7, norm=False)
        self.e2 = conv(b, 2 * b, 4, stride=2, norm=n)
        self.e3 = conv(2 * b, 4 * b, 4, stride=2, norm=n)
        self.e4 = conv(4 * b, 8 * b, 4, stride=2, norm=n)
        self.bottleneck = nn.Sequential(*[ResBlock(8 * b, n) for _ in range(cfg.res_blocks)])
        self.d1 = Up(8 * b, 4 * b, n)
        self.d2 = Up(8 * b, 2 * b, n)
        self.d3 = Up(4 * b, b, n)
        # Output scale 2: one more nearest ×2 + conv stage at sensor resolution before D4.
        self.d_up = Up(2 * b, b, n) if cfg.scale == 2 else None
        self.d4 = conv(2 * b if cfg.scale == 1 else b, 3, 7, norm=False, act=False)
        if self.prior is not None:
            # With a prior, D4 is the residual: a plain conv that init_weights starts at zero (spectral
            # norm would rescale any start to unit gain), so that at step 0 the model is the prior.
            parametrize.remove_parametrizations(self.d4[1], "weight", leave_parametrized=False)
            self.d4[1].zero_init = True
        # Saliency decoder (its own weights), fed by the three concatenated decoder tensors.
        self.s1a = nn.Sequential(Up(8 * b, sw, n), conv(sw, sw, 3, norm=n))
        self.s1b = nn.Sequential(Up(sw, sw, n), conv(sw, sw, 3, norm=n))
        self.s2 = nn.Sequential(Up(4 * b, sw, n), conv(sw, sw, 3, norm=n))
        self.s3 = conv(2 * b, sw, 3, norm=n)
        self.s_fuse = conv(3 * sw, sw, 3, norm=n)
        self.s_out = conv(sw, 1, 7, norm=False, act=False)

    def _inputs(self, raw: torch.Tensor, colour: torch.Tensor | None,
                thumb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E1's input and the prior's rendering (None without a prior). ``thumb``: the whole frame's
        thumbnail for the colour branch (None: the raw's own — right for a whole frame, not a tile)."""
        h, w = raw.shape[-2:]
        if raw.ndim != 4 or raw.shape[1] != 4 or h % 8 or w % 8:
            raise ValueError(f"generator input is (B, 4, h, w) with h, w multiples of 8, got {tuple(raw.shape)}")
        if self.prior is None:
            return raw, None
        if colour is None or colour.shape != (raw.shape[0], 12):
            raise ValueError(f"a generator with a colour prior takes each image's colour (B, 12) beside the raw, got "
                             f"{None if colour is None else tuple(colour.shape)}")
        with torch.autocast(raw.device.type, enabled=False):  # the colour pipeline in float32
            colour = colour.float()
            if self.colour_branch is not None:
                colour = self.colour_branch(frame_thumbnail(raw) if thumb is None else thumb.float(), colour)
            p = self.prior(raw.float(), colour)
        folded = F.pixel_unshuffle(p, self.cfg.scale) if self.cfg.scale > 1 else p
        return torch.cat([raw, folded.to(raw.dtype)], 1), p

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        c1 = torch.cat([self.d1(self.bottleneck(self.e4(e3))), e3], 1)
        return e1, e2, c1, torch.cat([self.d2(c1), e2], 1)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1, _, c1, c2 = self._encode(x)
        return c1, c2, torch.cat([self.d3(c2), e1], 1)

    def run_normalisations(self, raw: torch.Tensor, colour: torch.Tensor | None = None,
                           thumb: torch.Tensor | None = None) -> None:
        """G1 up to its last normalisation layer and no further: what a statistics pass needs
        (the output layers, the largest tensors at full resolution, are skipped)."""
        e1, _, _, c2 = self._encode(self._inputs(raw, colour, thumb)[0])
        if self.d_up is None:
            self.d3(c2)
        else:
            self.d_up(torch.cat([self.d3(c2), e1], 1))

    def _head(self, c3: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """D4 (and tanh, or the prior's sum) in float32 even under autocast: in bf16 the output would
        hold about 2,300 levels (steps of 128 in a 16-bit TIFF's top quarter)."""
        y = self.d_up(c3) if self.d_up is not None else c3
        with torch.autocast(y.device.type, enabled=False):
            out = self.d4(y.float())
            return torch.tanh(out) if prior is None else prior.float() + out

    def rgb(self, raw: torch.Tensor, colour: torch.Tensor | None = None,
            thumb: torch.Tensor | None = None) -> torch.Tensor:
        """G1 alone: raw (B, 4, h, w) in [-1, 1] (and colour (B, 12) with a prior, the frame's thumbnail
        (B, 4, 32, 32) with a colour branch) → rgb (B, 3, s·h, s·w)."""
        x, prior = self._inputs(raw, colour, thumb)
        return self._head(self._decode(x)[2], prior)

    def forward(self, raw: torch.Tensor, colour: torch.Tensor | None = None,
                thumb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, prior = self._inputs(raw, colour, thumb)
        c1, c2, c3 = self._decode(x)
        s = torch.cat([self.s1b(self.s1a(c1)), self.s2(c2), self.s3(c3)], 1)
        s = self.s_fuse(s)
        if self.cfg.scale == 2:
            s = _up(s)
        return self._head(c3, prior), torch.sigmoid(self.s_out(s))


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def init_weights(model: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """N(0, std) on every conv's weight. Under spectral norm the trainable tensor is
    ``parametrizations.weight.original`` — the paper's code initialised ``.weight``, which its
    spectral-norm wrapper hid, so its init never reached a conv."""
    with torch.no_grad():
        for m in convs(model):
            if not parametrize.is_parametrized(m, "weight"):
                if getattr(m, "zero_init", False):
                    m.weight.zero_()  # a residual that starts at nothing
                else:
                    m.weight.normal_(0.0, std, generator=generator)
                continue
            m.parametrizations.weight.original.normal_(0.0, std, generator=generator)
            # spectral_norm drew its power-iteration vectors from the global RNG; redraw them from
            # ours so that the same seed gives the same network in every process.
            sn = m.parametrizations.weight[0]
            for vec in (sn._u, sn._v):
                vec.normal_(0.0, 1.0, generator=generator)
                vec.div_(vec.norm().clamp_min(1e-12))
            sn._power_method(sn._reshape_weight_to_matrix(m.parametrizations.weight.original), 15)
            if m.bias is not None:
                m.bias.zero_()


def fold_spectral_norm(model: nn.Module) -> nn.Module:
    """Replace every spectral-norm parametrisation by the plain weight it currently gives
    (W / σ with the stored power-iteration vectors), in place; returns the model. Inference then
    runs no power iteration and no division."""
    was_training = model.training
    model.eval()  # eval: the parametrisation uses its stored u, v without another iteration
    for m in convs(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    model.train(was_training)
    return model


def norms(model: nn.Module) -> list[FrameNorm]:
    return [m for m in model.modules() if isinstance(m, FrameNorm)]


def set_norm_mode(model: nn.Module, mode: str, mask: torch.Tensor | None = None) -> None:
    """Put every FrameNorm of ``model`` in ``instance``, ``collect`` (over ``mask``) or ``fixed`` mode."""
    if mode not in ("instance", "collect", "fixed"):
        raise ValueError(f"unknown norm mode {mode!r}")
    for m in norms(model):
        m.mode, m.mask = mode, mask


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
