"""What torch does on CUDA that it does not on the CPU, checked on CPU evidence: RNG states of other
GPU counts, reduced-precision arithmetic (gels, TF32, bf16), host → device copies, memory formats,
decisions agreed across ranks, and tiles at any size."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raw2rgb.model import checkpoint, infer, metrics
from raw2rgb.model.distributed import Dist
from raw2rgb.model.generator import FrameNorm, Generator, GeneratorConfig, fold_spectral_norm, init_weights
from raw2rgb.model.infer import TileConfig, measure_overlaps, plan_overlap, run_tiled
from raw2rgb.model.presets import PRESETS
from raw2rgb.model.state import build, resume
from raw2rgb.model.train import Runtime, TrainError
from raw2rgb.pipeline import bayer, develop, synth
from tests.model.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
COLOUR = np.array([2.0, 1.0, 1.6, 1.7, -0.9, 0.2, 0.0, 1.3, -0.4, 0.0, -0.3, 1.3], np.float32)


def _recommended(scale: int = 2) -> Generator:
    g = Generator(GeneratorConfig(**{**PRESETS["tiny"].generator.to_json(), "scale": scale}))
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    with torch.no_grad():
        g.d4[1].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))  # as after training
    return fold_spectral_norm(g.eval())


# 1. resume with fewer visible GPUs

def test_no_cuda_rng_state_is_saved_or_restored(monkeypatch):
    """Nothing in training draws from a CUDA RNG; a checkpoint of 8 GPUs resumes on 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("CUDA RNG states saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("CUDA RNG states restored"))
    state = checkpoint.rng_state()
    assert "cuda" not in state
    checkpoint.set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8})  # an older checkpoint


# 3. colour-corrected PSNR with CUDA's only lstsq driver

@pytest.mark.parametrize("kind", ["grey", "constant", "saturated"])
def test_psnr_cc_of_rank_deficient_outputs_is_the_least_squares_answer(monkeypatch, kind):
    """CUDA's lstsq (gels) assumes full rank; grey, constant or clipped outputs are not. The best
    affine fit of such an output is known in closed form."""
    real = torch.linalg.lstsq
    monkeypatch.setattr(torch.linalg, "lstsq", lambda a, b, **kw: real(a, b, driver="gels"))
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.uniform(0, 255, (1, 3, 24, 24))).float().round()
    grey = target.mean(1, keepdim=True).round()
    out = {"grey": grey.expand(-1, 3, -1, -1), "constant": torch.full_like(target, 128.0),
           "saturated": torch.full_like(target, 255.0)}[kind]
    x = torch.cat([grey.flatten(1), torch.ones(1, 576)], 0).T.double()  # the fit's columns: grey, 1
    if kind == "grey":
        fit = x @ torch.linalg.pinv(x) @ target[0].flatten(1).T.double()
        want = metrics.psnr(fit.T.reshape(target.shape).clamp(0, 255).float(), target)
    else:  # a constant output: the best fit is each channel's mean
        want = metrics.psnr(target.mean(dim=(2, 3), keepdim=True).expand_as(target), target)
    got = metrics.psnr_cc(out, target)
    assert torch.isfinite(got).all() and abs(float(got) - float(want)) < 1e-3


# the SSIM's variances under reduced precision (TF32 convolutions)

def _naive_ssim(a, b, blur):
    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))).mean()


def test_ssim_survives_reduced_precision_convolutions(monkeypatch):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = np.clip(235 + rng.normal(0, 3, (48, 48, 3)), 0, 255).round()
    b = np.clip(a + rng.normal(0, 2, a.shape), 0, 255).round()
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255, channel_axis=2)
    conv = F.conv2d
    low = lambda x, w, **kw: conv(x.to(torch.bfloat16).float(), w, **kw).to(torch.bfloat16).float()  # noqa: E731
    monkeypatch.setattr(metrics.F, "conv2d", low)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()  # noqa: E731
    assert abs(float(metrics.ssim(t(a), t(b))) - ref) < 0.01
    g = metrics._gaussian(torch.device("cpu"))
    kx, ky = g.view(1, 1, 1, -1).expand(3, 1, 1, -1), g.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    blur = lambda x: low(low(x, kx, groups=3), ky, groups=3)  # noqa: E731
    assert abs(float(_naive_ssim(t(a), t(b), blur)) - ref) > 0.05  # the E[x²] − μ² form does not


# 4. bf16 output

def test_bf16_conversion_keeps_sixteen_bit_levels():
    g = _recommended()
    ramp = np.linspace(0.05, 0.6, 128, dtype=np.float32)
    packed = np.broadcast_to(ramp[None, None, :], (4, 96, 128)) * np.linspace(0.8, 1.0, 96)[None, :, None]
    out = run_tiled(g, packed.astype(np.float32), TileConfig(tile=64, overlap=16), amp=True, colour=COLOUR)
    levels = len(np.unique(np.rint(out.numpy() * 65535).astype(np.uint16)))
    assert levels > 8000, levels  # bf16 holds 256 steps per octave: about 2,300 levels at most


# 5. host → device copies in the forward

def test_no_tensor_is_made_from_host_data_in_a_forward(monkeypatch):
    g = Generator(PRESETS["paper"].generator)
    x = torch.rand(1, 4, 32, 32) * 2 - 1

    def refuse(*a, **kw):
        raise AssertionError("torch.tensor in a forward: a blocking host → device copy on CUDA")

    monkeypatch.setattr(torch, "tensor", refuse)
    with torch.no_grad():
        g.rgb(x)


def test_blend_windows_are_made_once_per_kind_of_tile(monkeypatch):
    calls = []
    real = infer.blend_window
    monkeypatch.setattr(infer, "blend_window", lambda *a: (calls.append(a), real(*a))[1])
    run_tiled(_recommended(scale=1), np.random.default_rng(0).random((4, 160, 160), np.float32),
              TileConfig(tile=64, overlap=16), colour=COLOUR)
    assert len(calls) <= 2 * 9  # 9 kinds of tile (corner, edge, inside) at most; 16 tiles × 2 before


# 6. channels_last through the normalisation

def test_frame_norm_keeps_channels_last_and_equals_instance_norm():
    x = (torch.randn(2, 8, 12, 10) * 3 + 1).contiguous(memory_format=torch.channels_last)
    y = FrameNorm()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.instance_norm(x.contiguous(), eps=1e-5), rtol=0, atol=1e-5)


# 7. a stop seen one step late by one rank

STOP_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from raw2rgb.model.terms import LossWeights
    from raw2rgb.model.train import Runtime, TrainConfig, train
    cfg = TrainConfig.preset_config("tiny", stage1_epochs=5, stage2_epochs=0, batch_size=1,
                                    weights=LossWeights(perceptual=0.0))
    rank = int(os.environ["RANK"])
    late = {0: 3, 1: 2}[rank]  # rank 0 sees Ctrl-C a step later than rank 1
    def on_step(step):
        if step == late:
            os.kill(os.getpid(), signal.SIGINT)
    r = train(sys.argv[1], sys.argv[2], cfg, Runtime(workers=0, log_every=1), on_step=on_step)
    print(f"rank {rank} stopped at {r.step}", flush=True)
""")


def test_ranks_agree_on_a_stop_that_one_of_them_sees_late(tiny_shards, tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           str(script), str(tiny_shards), str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ranks agree every AGREE_EVERY steps and at an epoch's last batch (4 steps an epoch here):
    # both stop at step 4, together, with a checkpoint
    assert "rank 0 stopped at 4" in proc.stdout and "rank 1 stopped at 4" in proc.stdout
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "latest.pt")["progress"]["step"] == 4


# 9. resuming with another precision or process count

def test_resume_refuses_fp16_from_a_bf16_run_and_another_world_mid_epoch(tiny_shards, tmp_path):
    cfg = tiny_config()
    nets = build(cfg, Runtime(), torch.device("cpu"), Dist(), False, None)
    opts = {"opt_G": torch.optim.Adam(nets.G.parameters())}
    progress = {"stage": 1, "epoch": 0, "batch": 2, "step": 2, "stats_lines": 2}
    checkpoint.save(tmp_path / "checkpoints" / "latest.pt", {"G": nets.G, "D": nets.D, **opts}, cfg.to_json(),
                    progress, precision="bf16")
    with pytest.raises(TrainError, match="written with bf16 training, resumed with --precision fp16"):
        resume(tmp_path, nets, cfg, "fp16", Dist())
    with pytest.raises(TrainError, match="written by 1 process\\(es\\) in the middle of an epoch; resume it with 1"):
        resume(tmp_path, nets, cfg, "bf16", Dist(rank=0, world=2))


# frames with a side of 8 packed pixels or less

def test_a_frame_of_a_few_pixels_converts():
    out = run_tiled(_recommended(scale=1), np.random.default_rng(0).random((4, 5, 6), np.float32), colour=COLOUR)
    assert out.shape == (3, 5, 6) and torch.isfinite(out).all()


# tiles at any size

@pytest.fixture(scope="module")
def paper_g():
    g = Generator()  # the paper configuration, random N(0, 0.02) weights
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    return fold_spectral_norm(g.eval())


@pytest.mark.parametrize("which", ["paper", "recommended"])
def test_any_tile_with_the_default_overlap_matches_one_tile(which, paper_g):
    """The overlap a model needs is measured on a probe frame; with it, tiles of any size ≥ 64 agree
    with a one-tile conversion within 2/255 (96-px tiles with a 32-px overlap gave 2.9/255 before)."""
    g = paper_g if which == "paper" else _recommended()
    errors = measure_overlaps(g)
    need = next(o for o, e in errors.items() if e <= infer.TOLERANCE)
    cam = synth.Camera(noise=0.002)
    mosaic = synth.capture(synth.scene("coffee", (320, 448)), cam, np.random.default_rng(1))
    packed = bayer.normalize_packed(bayer.planes(mosaic), cam.black, cam.white, np.float32)  # (4, 160, 224)
    colour = develop.frame_colour(packed, cam.wb_gains, develop.cam_to_srgb(np.asarray(cam.xyz_to_cam)))
    one = run_tiled(g, packed, TileConfig(tile=224, overlap=0), colour=colour)
    for tile in (64, 96, 136):
        t, o = plan_overlap(tile, None, need, errors)
        tiled = run_tiled(g, packed, TileConfig(tile=t, overlap=o), colour=colour)
        assert float((tiled - one).abs().mean()) * 255 < 2.0, (tile, t, o)
    assert dataclasses.replace(TileConfig(), overlap=need).overlap == need


# the performance paths: each the same numbers as the form it replaced

@pytest.mark.parametrize("pad", [1, 2, 3])
def test_reflect_pad_by_slices_equals_reflection_padding_and_keeps_channels_last(pad):
    from raw2rgb.model.generator import reflect_pad_slices as reflect_pad  # the form CUDA runs

    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(pad)).requires_grad_(True)
    ours, theirs = reflect_pad(x, pad), F.pad(x, (pad,) * 4, mode="reflect")
    assert torch.equal(ours, theirs)
    g1, = torch.autograd.grad((ours * torch.arange(ours.numel()).reshape(ours.shape)).sum(), x)
    g2, = torch.autograd.grad((theirs * torch.arange(theirs.numel()).reshape(theirs.shape)).sum(), x)
    assert torch.equal(g1, g2)
    cl = x.detach().contiguous(memory_format=torch.channels_last)
    assert reflect_pad(cl, pad).is_contiguous(memory_format=torch.channels_last)


def test_no_reflection_pad_layer_is_left_in_the_networks():
    from raw2rgb.model.discriminator import Discriminator

    for net in (Generator(PRESETS["paper"].generator), Discriminator()):
        assert not any(isinstance(m, torch.nn.ReflectionPad2d) for m in net.modules())


def test_moving_average_by_multi_tensor_lerp_equals_the_formula():
    from raw2rgb.model.state import update_ema

    net, ema = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        ema.weight.copy_(torch.tensor([0.0, 0.0, 0.0]))
        net.running_mean.copy_(torch.tensor([5.0, 6.0, 7.0]))
    update_ema(ema, net, decay=0.5, step=100)  # d = min(0.5, 101/110) = 0.5
    assert ema.weight.tolist() == [0.5, 1.0, 1.5] and ema.running_mean.tolist() == [5.0, 6.0, 7.0]
    update_ema(ema, net, decay=0.999, step=0)  # d = 1/10
    assert torch.allclose(ema.weight, torch.tensor([0.95, 1.9, 2.85]))


def test_to_model_copies_each_stored_tensor_once(monkeypatch):
    from raw2rgb.model.data import to_model

    batch = {"raw": torch.zeros(1, 4, 8, 8, dtype=torch.uint16), "rgb": torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
             "saliency": torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "colour": torch.zeros(1, 12)}
    moved = []
    real = torch.Tensor.to

    def to(self, *a, **kw):
        if a and isinstance(a[0], (str, torch.device)) or "device" in kw:
            moved.append(self.dtype)
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    to_model(batch, "cpu")
    assert sorted(map(str, moved)) == sorted(map(str, [torch.uint16, torch.uint8, torch.uint8, torch.float32]))


def test_the_discriminator_iterates_its_spectral_norms_once_per_gan_step(tiny_shards, monkeypatch):
    from torch.nn.utils import parametrizations

    from raw2rgb.model.state import optimisers
    from raw2rgb.model.train import train_step

    cfg = tiny_config()
    nets = build(cfg, Runtime(), torch.device("cpu"), Dist(), False, None)
    opts = optimisers(nets, cfg, 2, scaler_on=False)
    assert not opts.opt_G.defaults["fused"]  # fused Adam is for CUDA (test_cuda.py checks it there)
    d_norms = {id(m) for m in nets.D.modules() if isinstance(m, parametrizations._SpectralNorm)}
    calls = []
    real = parametrizations._SpectralNorm._power_method
    monkeypatch.setattr(parametrizations._SpectralNorm, "_power_method",
                        lambda self, *a: (calls.append(id(self)), real(self, *a))[1])
    s = 32
    batch = {"raw": torch.rand(2, 4, s, s) * 2 - 1, "rgb": torch.rand(2, 3, s, s) * 2 - 1,
             "saliency": torch.rand(2, 1, s, s), "colour": torch.from_numpy(np.stack([COLOUR] * 2))}
    amp = torch.autocast("cpu", enabled=False)
    train_step(nets, opts, batch, 2, cfg.weights, amp)
    d_calls = [c for c in calls if c in d_norms]
    assert len(d_calls) == len(d_norms) and nets.D.training  # once each; D left in training mode


@pytest.mark.parametrize("fmt,top,dtype", [("png", 255, np.uint8), ("tiff16", 65535, np.uint16)])
def test_quantising_on_the_device_gives_the_levels_write_image_would(fmt, top, dtype):
    from raw2rgb.model.renderers import quantise

    rgb = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    rgb[0, 0, :4] = torch.tensor([0.5 / top, 1.5 / top, 2.5 / top, 1.0])  # ties round to even, as np.rint
    q = quantise(rgb, fmt)
    expected = np.rint(np.clip(rgb.permute(1, 2, 0).numpy(), 0, 1) * top).astype(dtype)
    assert q.dtype == dtype and q.shape == (17, 23, 3) and np.array_equal(q, expected)


@pytest.mark.parametrize("tile", [256, 512, 1024, 2048])
def test_sampled_statistics_windows_reach_every_edge_of_a_12_mp_frame(tile):
    hh, ww = 1504, 2000  # a 12-MP frame, packed
    th, tw = min(tile, hh), min(tile, ww)
    plan = infer.plan_tiles(hh, ww, th, tw, 64)
    sample, sh, sw = infer.stats_plan(plan, hh, ww, th, tw, 1 << 20)
    assert sample is not plan and len(sample) >= infer.STATS_WINDOWS - 1
    assert len(sample) * sh * sw <= 1 << 20
    assert min(t.y for t in sample) == 0 and max(t.y for t in sample) + sh == hh
    assert min(t.x for t in sample) == 0 and max(t.x for t in sample) + sw == ww
    cells = sorted((t.y, t.x) for t in sample)
    assert all(not (abs(a[0] - b[0]) < sh and abs(a[1] - b[1]) < sw) for a, b in zip(cells, cells[1:]))


def test_sampled_statistics_see_a_bottom_right_quarter_that_differs(paper_g):
    """A frame dark but for its bottom-right quarter, one tile larger than the statistics budget: the
    sampled statistics (first normalisation layer: the frame's own levels) match a pass over the
    whole frame. One window at the top-left, as a budget of one tile-half window gave, saw only the
    dark part."""
    from raw2rgb.model.generator import norms

    packed = np.full((4, 512, 640), 0.1, np.float32)
    packed[:, 256:, 320:] = 0.9
    packed += np.random.default_rng(0).normal(0, 0.02, packed.shape).astype(np.float32)

    def first_layer_mean(stats_pixels: int) -> torch.Tensor:
        run_tiled(paper_g, packed, TileConfig(tile=1024, overlap=0, stats_pixels=stats_pixels))
        return norms(paper_g)[0].mean.clone()

    whole, sampled = first_layer_mean(1 << 20), first_layer_mean(1 << 16)  # 512 × 640 = 327,680 pixels
    dark = packed[:, :256, :320].copy()
    run_tiled(paper_g, dark, TileConfig(tile=1024, overlap=0, stats_pixels=1 << 20))
    top_left = norms(paper_g)[0].mean.clone()
    err, control = float((sampled - whole).abs().mean()), float((top_left - whole).abs().mean())
    assert err < 0.1 * control, (err, control)
