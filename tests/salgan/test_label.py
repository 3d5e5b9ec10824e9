"""The saliency stage: shards, resume, methods, failures, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.pipeline import synth
from raw2rgb.salgan import label
from raw2rgb.salgan.classical import spectral_residual
from raw2rgb.salgan.methods import resolve_method
from raw2rgb.salgan.model import predict
from raw2rgb.salgan.weights import ENV_VAR, load_salgan
from tests.conftest import kill_midway


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for i, name in enumerate(["astronaut", "chelsea", "coffee"]):
        iio.imwrite(folder / f"{i}_{name}.png", synth.scene(name, (96, 128)))
    return folder


def _cli(*args, env=None):
    return CliRunner(env=env).invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


def test_shards_equal_per_image_inference(images, tmp_path, weights_file):
    pairs = sorted((p.stem, str(p)) for p in images.iterdir())
    method = resolve_method("salgan", weights_file)
    result = label.label(pairs, tmp_path / "sal", method, shard_size=2, batch_size=1,
                         device="cpu", workers=0)
    assert (result.done, len(result.failed)) == (2, 0)
    model = load_salgan(weights_file)
    got = {}
    for shard in sorted((tmp_path / "sal").glob("saliency-*.h5")):
        s = label.read_saliency_shard(shard)
        assert s.method == "salgan" and s.weights_sha256 == method.weights_sha256
        assert s.maps.dtype == np.uint8 and s.maps.shape[1:] == (96, 128)
        got.update(zip(s.ids, s.maps))
        with h5py.File(shard) as f:
            assert f["saliency"].chunks == (1, 96, 128)
    assert sorted(got) == [k for k, _ in pairs]
    for key, path in pairs:
        rgb = torch.from_numpy(label.read_rgb(path)).permute(2, 0, 1)[None].contiguous()
        np.testing.assert_array_equal(got[key], predict(model, rgb)[0].numpy())
    # Batched inference agrees to within one grey level.
    label.label(pairs, tmp_path / "sal2", method, shard_size=4, batch_size=3, device="cpu", workers=2)
    batched = label.read_saliency_shard(tmp_path / "sal2" / "saliency-00000.h5")
    for key, m in zip(batched.ids, batched.maps):
        assert np.abs(m.astype(int) - got[key]).max() <= 1


def test_spectral_residual_method_is_recorded(images, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    result = _cli("saliency", images, "-o", tmp_path / "sal", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "no SalGAN weights found" in result.output and "spectral residual" in result.output
    manifest = json.loads((tmp_path / "sal" / "manifest.json").read_text())
    assert manifest["params"]["method"] == "spectral-residual"
    s = label.read_saliency_shard(tmp_path / "sal" / "saliency-00000.h5")
    assert s.method == "spectral-residual" and s.weights_sha256 == ""
    np.testing.assert_array_equal(s.maps[0], spectral_residual(label.read_rgb(str(images / "0_astronaut.png"))))


def test_the_methods_load_without_torch():
    """The CLI reads the methods for --method's choices and help: no torch, no scikit-image until used."""
    probe = "import sys, raw2rgb.salgan.methods; print(sorted(m for m in ('torch', 'skimage') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_missing_weights_with_method_salgan_fails_clearly(images, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache"), ENV_VAR: ""}
    result = _cli("saliency", images, "-o", tmp_path / "sal", "--method", "salgan", env=env)
    assert result.exit_code == 1
    assert "no SalGAN weights" in result.output and ENV_VAR in result.output
    assert "import-weights" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "sal").exists()


def test_unreadable_image_fails_alone(images, tmp_path):
    (images / "9_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "5_odd.png").write_bytes(iio.imwrite("<bytes>", np.zeros((40, 40, 3), np.uint8), extension=".png"))
    result = _cli("saliency", images, "-o", tmp_path / "sal", "--method", "spectral-residual",
                  "--workers", "0")
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.startswith("  failed:")]
    assert len(lines) == 1 and "9_broken.jpg: unreadable image" in lines[0]
    ids = [i for p in sorted((tmp_path / "sal").glob("*.h5")) for i in label.read_saliency_shard(p).ids]
    assert ids == ["0_astronaut", "1_chelsea", "2_coffee", "5_odd"]  # other sizes get own shard


def test_import_weights_command(npz_file, tmp_path):
    out = tmp_path / "w.pt"
    result = _cli("salgan", "import-weights", npz_file, "-o", out)
    assert result.exit_code == 0 and out.is_file()
    load_salgan(out)
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros(3))
    result = _cli("salgan", "import-weights", bad, "-o", tmp_path / "x.pt")
    assert result.exit_code == 1 and "expected 54 arrays" in result.output
    assert "Traceback" not in result.output


@pytest.mark.timeout(240)
def test_killed_run_resumes_without_recomputing_finished_shards(tmp_path, weights_file):
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(6):
        iio.imwrite(folder / f"{i}.png", synth.scene("coffee", (64, 64)))
    out = tmp_path / "sal"
    cmd = [sys.executable, "-m", "raw2rgb", "-q", "saliency", str(folder), "-o", str(out),
           "--method", "salgan", "--weights", str(weights_file), "--shard-size", "1",
           "--device", "cpu", "--workers", "0"]
    assert 2 <= kill_midway(cmd, out, "saliency-*.h5", 2, timeout=180) < 6, "the run must be killed mid-way"
    assert not (out / "manifest.json").exists()
    # Journalled shards are done; one renamed into place just before the kill may not be yet.
    journalled = [json.loads(p.read_text()) for p in (out / ".journal").glob("*.json")]
    finished = {o: ((out / o).stat().st_ino, (out / o).stat().st_mtime_ns) for r in journalled for o in r["outputs"]}
    assert len(finished) >= 1

    rerun = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{6 - len(finished)} done, {len(finished)} cached" in rerun.stderr
    for name, stamp in finished.items():
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert len(list(out.glob("saliency-*.h5"))) == 6 and not (out / ".journal").exists()
