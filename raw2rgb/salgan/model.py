"""The SalGAN generator (Pan et al. 2017) with its input and output conventions.

Encoder: VGG16 conv1_1 … conv5_3 (3×3, ReLU) with max-pools after conv1_2, conv2_2, conv3_3 and
conv4_3 — none after conv5, so a 192×256 input gives a 512×12×16 bottleneck. Decoder, mirrored:
3 × conv 512, up, 3 × 512, up, 3 × 256, up, 2 × 128, up, 2 × 64 (3×3, ReLU, nearest ×2), then a
1×1 conv 64→1 and a sigmoid. 31,787,009 parameters.

Input convention (the original Theano code): RGB resized to 256×192 (W×H), values 0–255,
channels reversed to BGR, BGR mean subtracted. Output: ×255, bicubic resize back to the image
size, 5×5 Gaussian blur, clipped to 0–255.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = (192, 256)  # (H, W)
BGR_MEAN = (103.939, 116.779, 123.68)
# (out channels of each conv, then "M" for a 2×2 max-pool) — VGG16 up to conv5_3.
ENCODER = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Decoder from the bottleneck: "U" is a nearest ×2 upsampling.
DECODER = (512, 512, 512, "U", 512, 512, 512, "U", 256, 256, 256, "U", 128, 128, "U", 64, 64)
PARAMETERS = 31_787_009


def _stack(spec: tuple, in_ch: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for s in spec:
        if s == "M":
            layers.append(nn.MaxPool2d(2))
        elif s == "U":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += [nn.Conv2d(in_ch, s, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = s
    return nn.Sequential(*layers), in_ch


class SalGAN(nn.Module):
    """SalGAN generator. ``forward`` takes preprocessed BGR input (B, 3, H, W), H and W multiples
    of 16, and returns saliency in [0, 1] of shape (B, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, ch = _stack(ENCODER, 3)
        self.decoder, ch = _stack(DECODER, ch)
        self.output = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 16 or x.shape[3] % 16:
            raise ValueError(f"SalGAN takes (B, 3, H, W) with H, W multiples of 16, got {tuple(x.shape)}")
        return torch.sigmoid(self.output(self.decoder(self.encoder(x))))

    def convs(self) -> list[nn.Conv2d]:
        """The 27 convolutions in the original weight-file order (encoder, decoder, output)."""
        return [m for m in (*self.encoder, *self.decoder, self.output) if isinstance(m, nn.Conv2d)]


def preprocess(rgb: torch.Tensor, size: tuple[int, int] = INPUT_SIZE) -> torch.Tensor:
    """RGB (B, 3, H, W) uint8 or float in 0–255 → SalGAN input (B, 3, 192, 256) float32.

    Area interpolation as in the original (cv2.INTER_AREA), then RGB → BGR and mean removal.
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected RGB (B, 3, H, W), got {tuple(rgb.shape)}")
    x = rgb.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="area")
    return x.flip(1) - _bgr_mean(x.device)


# Constants made once per device: a host-to-device copy per batch would be a synchronous one.
@functools.lru_cache(maxsize=8)
def _bgr_mean(device: torch.device) -> torch.Tensor:
    return torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)


@functools.lru_cache(maxsize=8)
def _gaussian_kernel5(device: torch.device) -> torch.Tensor:
    # cv2.GaussianBlur(m, (5, 5), 0) uses sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8 = 1.1.
    sigma = 1.1
    t = torch.arange(5, dtype=torch.float64) - 2
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    return (k[:, None] * k[None, :]).to(dtype=torch.float32).view(1, 1, 5, 5).to(device)


def postprocess(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Network output (B, 1, h, w) in [0, 1] → maps (B, H, W) uint8 at the image size."""
    m = saliency.float() * 255.0
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bicubic", align_corners=False)
    m = F.conv2d(F.pad(m, (2, 2, 2, 2), mode="reflect"), _gaussian_kernel5(m.device))
    return m.clamp_(0, 255).round_().to(torch.uint8)[:, 0]


@torch.no_grad()
def predict(model: SalGAN, rgb: torch.Tensor, amp: bool | None = None) -> torch.Tensor:
    """Saliency maps (B, H, W) uint8 of RGB images (B, 3, H, W) in 0–255, on the model's device.

    ``amp`` (default: on for CUDA) runs the network in bfloat16 autocast; pre- and
    post-processing stay in float32.
    """
    device = next(model.parameters()).device
    rgb = rgb.to(device, non_blocking=True)
    x = preprocess(rgb)
    use_amp = device.type == "cuda" if amp is None else amp
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        y = model(x)
    return postprocess(y, tuple(rgb.shape[-2:]))


class Predictor:
    """:func:`predict` with the full batch captured as a CUDA graph.

    At batch 8 on an H100 the forward pass is bound by kernel launches from Python, which also
    compete with the data loader for the interpreter; one graph replay per batch removes that
    (measured: 1,876 vs 1,082 maps/s inside the saliency stage). Other shapes (a shard's last,
    smaller batch) and CPU run eagerly. Outputs match :func:`predict`.
    """

    MAX_GRAPHS = 4

    def __init__(self, model: SalGAN):
        self.model = model
        self.device = next(model.parameters()).device
        self._graphs: dict[tuple[int, ...], tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return predict(self.model, rgb)
        key = tuple(rgb.shape)
        if key not in self._graphs:
            if len(self._graphs) >= self.MAX_GRAPHS:
                return predict(self.model, rgb)
            self._graphs[key] = self._capture(rgb)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(rgb, non_blocking=True)
        graph.replay()
        return static_out.clone()

    def _capture(self, rgb: torch.Tensor):
        static_in = torch.empty(rgb.shape, dtype=rgb.dtype, device=self.device)
        static_in.copy_(rgb)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN picks its algorithms)
            for _ in range(3):
                predict(self.model, static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = predict(self.model, static_in)
        return static_in, graph, static_out
