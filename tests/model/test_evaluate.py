"""Metrics against closed forms and scikit-image; `raw2rgb evaluate`; export parity in onnxruntime."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.model import metrics
from raw2rgb.model.losses import LossWeights
from raw2rgb.model.train import Runtime, TrainConfig, train
from tests.model.conftest import make_shards


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)])


def test_psnr_of_known_noise_equals_the_closed_form():
    """An image against itself plus ±d on every value: MSE is d², PSNR 10·log10(255²/d²)."""
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(10, 245, (2, 3, 32, 48)).astype(np.float32))
    signs = torch.from_numpy(rng.choice([-1.0, 1.0], img.shape).astype(np.float32))
    for d in (1.0, 5.0):
        got = metrics.psnr(img + d * signs, img)
        assert torch.allclose(got, torch.full((2,), 10 * math.log10(255**2 / d**2)), atol=1e-4)
    assert torch.isinf(metrics.psnr(img, img)).all()


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 56, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round()
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                                channel_axis=2)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()  # noqa: E731
    assert abs(float(metrics.ssim(t(a), t(b))) - ref) < 1e-3
    assert float(metrics.ssim(t(a), t(a))) == pytest.approx(1.0, abs=1e-6)


def test_colour_corrected_psnr_undoes_an_affine_colour_change():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.uniform(30, 220, (1, 3, 24, 24)).astype(np.float32))
    m = torch.tensor([[0.8, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.7]])
    output = torch.einsum("ij,bjhw->bihw", m, target) + 7
    assert float(metrics.psnr(output, target)) < 30
    assert float(metrics.psnr_cc(output, target)) > 60


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    root = make_shards(tmp / "shards", {"train": 4, "val": 3, "test": 2})
    cfg = TrainConfig.preset_config("tiny", stage1_epochs=1, stage2_epochs=1, batch_size=4, weights=LossWeights(perceptual=0.0))
    train(root, tmp / "run", cfg, Runtime(workers=0))
    return root, tmp / "run"


def test_evaluate_writes_per_image_csv_and_summary(trained, tmp_path):
    root, run = trained
    r = _cli("evaluate", root, "--checkpoint", run, "--split", "val", "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {"psnr", "ssim", "psnr_cc", "images", "protocol"} <= set(summary) and summary["images"] == 3
    assert summary["protocol"]["size"] == [32, 32] and "per image" in summary["protocol"]["psnr"]
    rows = list(csv.DictReader((tmp_path / "ev" / "per_image.csv").open()))
    assert [row["id"] for row in rows] == ["val0", "val1", "val2"]
    assert np.mean([float(row["psnr"]) for row in rows]) == pytest.approx(summary["psnr"], abs=1e-3)
    assert summary["psnr_cc"] >= summary["psnr"]  # an affine fit can only bring the output closer
    isp = json.loads(_cli("evaluate", root, "--method", "isp", "--split", "test").output)
    assert isp["images"] == 2 and isp["method"] == "isp" and isp["psnr"] > 10


def test_evaluate_refuses_missing_splits_and_checkpoints(trained, tmp_path):
    root, _ = trained
    empty = make_shards(tmp_path / "s", {"train": 2, "val": 0})
    r = _cli("evaluate", empty, "--method", "isp")
    assert r.exit_code == 1 and "val split is empty" in r.output
    r = _cli("evaluate", root, "--method", "model")
    assert r.exit_code == 1 and "--checkpoint" in r.output


def test_onnx_export_matches_eager_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from raw2rgb.model.infer import load_generator

    _, run = trained
    r = _cli("export", run, "--onnx", tmp_path / "g.onnx", "--pt2", tmp_path / "g.pt2")
    assert r.exit_code == 0, r.output
    g, _ = load_generator(run)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"))
    program = torch.export.load(str(tmp_path / "g.pt2")).module()
    for shape in ((1, 4, 64, 96), (3, 4, 40, 24)):  # dynamic batch, height and width
        x = torch.rand(*shape) * 2 - 1
        with torch.no_grad():
            ref = g.rgb(x)
            got = torch.from_numpy(session.run(None, {"raw": x.numpy()})[0])
            assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4
            assert float((program(x) - ref).abs().max()) < 1e-5
