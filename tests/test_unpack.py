"""`raw2rgb unpack` end to end: outputs, sidecars, errors, caching, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.files import file_sha256
from raw2rgb.pipeline import bayer, rawio, synth
from tests.conftest import BLACK, WHITE, kill_midway


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


def test_unpack_all_patterns_with_a_bad_file_among_them(make_dng, tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "raw"
    mosaics = {}
    for p in bayer.PATTERNS:
        mosaics[p] = rng.integers(0, WHITE + 1, (66, 98), dtype=np.uint16)
        make_dng(f"raw/{p}.dng", p, mosaics[p])
    (src / "broken.dng").write_bytes(b"II*\x00garbage" * 50)
    cells = (1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1, 1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1)
    synth.write_dng(src / "xtrans.dng", np.full((96, 96), 1000, np.uint16), synth.Camera(), cfa=(6, 6, cells))
    synth.write_dng(src / "linear.dng", np.full((64, 96, 3), 1000, np.uint16), synth.Camera(), linear=True)
    out = tmp_path / "out"
    result = _run("unpack", src, "-o", out)
    assert result.exit_code == 1
    assert f"{src / 'broken.dng'}: LibRaw cannot read it" in result.output
    assert f"{src / 'xtrans.dng'}: X-Trans sensor" in result.output
    assert f"{src / 'linear.dng'}: not a Bayer mosaic" in result.output
    assert "Traceback" not in result.output and "4 done, 0 cached, 3 failed" in result.output
    for p, m in mosaics.items():
        got = rawio.read_packed_png(out / f"{p}.png")
        want = bayer.normalize_packed(bayer.pack(m, p), BLACK, WHITE)
        np.testing.assert_array_equal(got, want)
        meta = json.loads((out / f"{p}.json").read_text())
        assert meta["sha256"] == file_sha256(src / f"{p}.dng")
        assert meta["frame"]["pattern"] == p and meta["frame"]["black_level"] == list(BLACK)
        assert meta["unify_crop"] == list(bayer.unify_offset(p)) and meta["shape"] == list(got.shape)
    # A second run rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    result = _run("unpack", src, "-o", out)
    assert "0 done, 4 cached, 3 failed" in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def test_bit_depth_8_writes_the_aim2019_form(make_dng, tmp_path):
    m = np.random.default_rng(6).integers(0, WHITE + 1, (32, 32), dtype=np.uint16)
    path = make_dng("x.dng", "GRBG", m)
    out = tmp_path / "out"
    assert _run("unpack", path, "-o", out, "--bit-depth", "8").exit_code == 0
    got = rawio.read_packed_png(out / "x.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, bayer.normalize_packed(bayer.pack(m, "GRBG"), BLACK, WHITE, np.uint8))
    # and read_raw takes it back as an AIM-2019 packed input
    frame = rawio.read_raw(out / "x.png")
    assert frame.source_format == "aim2019-png"
    np.testing.assert_array_equal(frame.packed(np.uint8), got)


def test_folders_keep_subpaths_and_collisions_are_refused(make_dng, tmp_path):
    make_dng("raw/a/x.dng")
    make_dng("raw/b/x.dng")
    out = tmp_path / "out"
    assert _run("unpack", tmp_path / "raw", "-o", out).exit_code == 0
    assert (out / "a" / "x.png").is_file() and (out / "b" / "x.png").is_file()
    result = _run("unpack", tmp_path / "raw/a/x.dng", tmp_path / "raw/b/x.dng", "-o", tmp_path / "o2")
    assert result.exit_code == 1 and "would both be named 'x'" in result.output
    assert "Traceback" not in result.output


def test_missing_input_fails_alone(make_dng, tmp_path):
    good = make_dng("good.dng")
    result = _run("unpack", good, tmp_path / "nope.dng", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.dng'}: no such file" in result.output
    assert (tmp_path / "out" / "good.png").is_file()


@pytest.mark.timeout(240)
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    src = tmp_path / "raw"
    cam = synth.Camera(pattern="BGGR", noise=0.01)
    rng = np.random.default_rng(7)
    scene = synth.scene("coffee", (800, 1200))
    n = 12
    for i in range(n):
        synth.write_dng(src / f"f{i:02d}.dng", synth.capture(scene, cam, rng), cam)
    cmd = [sys.executable, "-m", "raw2rgb", "-q", "unpack", str(src), "-o"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    killed = tmp_path / "killed"
    done_at_kill = kill_midway(cmd + [str(killed)], killed, "f*.png", 3)
    assert 3 <= done_at_kill < n, "the run must be killed mid-way"

    subprocess.run(cmd + [str(killed)], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(cmd + [str(clean)], env=env, check=True, capture_output=True)
    assert _tree(killed) == _tree(clean)
    assert len(list(clean.glob("f*.png"))) == n
