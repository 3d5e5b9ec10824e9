"""`raw2rgb export`: ONNX and torch.export programs agree with eager PyTorch at any batch and size."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.model.infer import load_generator
from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import profile
from tests.model.conftest import make_shards, tiny_config


@pytest.fixture(scope="module", params=["poly3", "lut", "poly3+global"])
def trained(tmp_path_factory, request):
    """A tiny run with each kind of colour prior (the LUT's gathers must export too), and with the
    global colour branch (its thumbnail an input of its own)."""
    tmp = tmp_path_factory.mktemp("export")
    root = make_shards(tmp / "shards", {"train": 4, "val": 2})
    cfg = tiny_config()
    model, _, branch = request.param.partition("+")
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, prior_model=model,
                                                                 colour_branch=branch or "none"))
    train(root, tmp / "run", cfg, Runtime(workers=0))
    assert profile.load(tmp / "run" / "profile.json").model == model  # the prior the run fitted
    return root, tmp / "run"


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)])


def test_onnx_export_matches_eager_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, run = trained
    r = _cli("export", run, "--onnx", tmp_path / "g.onnx", "--pt2", tmp_path / "g.pt2")
    assert r.exit_code == 0, r.output
    g, _ = load_generator(run)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"))
    program = torch.export.load(str(tmp_path / "g.pt2")).module()
    for shape in ((1, 4, 64, 96), (3, 4, 40, 24)):  # dynamic batch, height and width
        x = torch.rand(*shape) * 2 - 1
        colour = torch.tensor([[1.8, 1.0, 1.5, 1.6, -0.5, -0.1, -0.2, 1.4, -0.2, 0.0, -0.4, 1.4]]).expand(shape[0], 12)
        inputs = {"raw": x, "colour": colour}
        if g.colour_branch is not None:  # a frame's thumbnail, not the input's own: it must be used
            inputs["thumb"] = torch.rand(shape[0], 4, 32, 32) * 2 - 1
            assert float(g.colour_branch.head.weight.detach().abs().max()) > 0  # trained: the branch does something
        with torch.no_grad():
            ref = g.rgb(*inputs.values())
            got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
            assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4
            assert float((program(*inputs.values()) - ref).abs().max()) < 1e-5
