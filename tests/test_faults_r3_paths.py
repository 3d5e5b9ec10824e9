"""Round 3 faults: nothing written outside the output, no user file replaced, one line for every failure
(issue 31: causes 1, 2, 9, 14, 15). To be merged into tests/test_faults.py."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from raw2rgb.pipeline import pairs, rawio, stage, synth
from tests.conftest import cli
from tests.test_faults import _files


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if p != skip and skip not in p.parents}


# -- 1. a scene is a name, never a path ----------------------------------------------------------------------

def test_a_scene_column_that_leads_outside_the_dataset_writes_nothing_there(tmp_path):
    made, src, ds = tmp_path / "made", tmp_path / "w" / "src", tmp_path / "w" / "ds"
    synth.paired_dngs(made, size=(96, 128), scenes=synth.SCENES[:3])
    (src / "raw").mkdir(parents=True)
    (src / "rgb").mkdir()
    for name, scene in zip("acb", synth.SCENES[:3]):
        shutil.copy(made / f"{scene}.dng", src / "raw" / f"{name}.dng")
        shutil.copy(made / f"{scene}.jpg", src / "rgb" / f"{name}.jpg")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "settings.json").write_bytes(b'{"theme": "dark"}\n')
    csv = tmp_path / "w" / "pairs.csv"  # the CSV (its /home/me is here), and one good row
    csv.write_text(f"raw,rgb,scene\nraw/a.dng,rgb/a.jpg,{victim}/settings\nraw/c.dng,rgb/c.jpg,../../../escaped\n"
                   "raw/b.dng,rgb/b.jpg,b\n")
    before = _tree(tmp_path, ds)
    r = cli("prepare", src, "-o", ds, "--layout", "pairs", "--pairs-csv", csv, "--until", "unpack")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{csv}: line 2: scene '{victim}/settings' is an absolute path, not a name; refused" in r.output
    assert f"{csv}: line 3: scene '../../../escaped' has a part '..'" in r.output
    assert _tree(tmp_path, ds) == before  # victim/settings.json byte for byte; no escaped.*, no folder
    assert sorted(p.name for p in (ds / "unpack").iterdir() if not p.name.startswith(".")) == \
        ["b.json", "b.png", "manifest.json"]
    csv.write_text(f"raw,rgb,scene\nraw/a.dng,rgb/a.jpg,{victim}/settings\n")  # every row refused: says why
    r = cli("prepare", src, "-o", tmp_path / "w" / "ds2", "--layout", "pairs", "--pairs-csv", csv)
    assert r.exit_code == 1 and "no pairs found" in r.output and "is an absolute path" in r.output, r.output
    assert not (tmp_path / "w" / "ds2" / "unpack").exists()
    assert _tree(victim, victim / "none") == {"settings.json": b'{"theme": "dark"}\n'}


@pytest.mark.parametrize("scene,ok", [("a", True), ("test/12", True), ("IMG 0001", True), ("", False),
                                      ("/etc/x", False), ("..", False), ("a/../../b", False), ("a//b", False),
                                      ("a/", False), ("./a", False), (".journal/x", False), ("a\nb", False)])
def test_the_scene_rule_takes_names_and_refuses_paths(scene, ok):
    assert (pairs.scene_problem(scene) is None) == ok


# -- 2. convert and unpack never replace a file they did not write ---------------------------------------------

@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shoot") / "shoot"
    synth.sample_dngs(d, size=(96, 128))  # 4 DNGs, each with the camera's JPEG beside it
    return d


def test_convert_into_the_shoot_keeps_the_cameras_jpegs(shoot, tmp_path):
    s = tmp_path / "shoot"
    shutil.copytree(shoot, s)
    lone = sorted(s.glob("*.jpg"))[-1]
    lone.unlink()  # this RAW has no JPEG beside it: it converts
    cameras = {p.name: p.read_bytes() for p in s.glob("*.jpg")}
    r = cli("convert", s, "-o", s, "--format", "jpg")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "1 done, 0 cached, 3 failed" in r.output
    for name in cameras:  # each clash listed, naming the file and the way out
        assert (f"failed: {s / name}: already there and not written by raw2rgb convert, so not replaced "
                "(--overwrite replaces it; or choose another output folder)") in r.output
    assert {n: (s / n).read_bytes() for n in cameras} == cameras
    assert lone.is_file()
    r = cli("convert", s, "-o", s, "--format", "jpg")  # its own output stays cached, the cameras' stay refused
    assert r.exit_code == 1 and "0 done, 1 cached, 3 failed" in r.output, r.output
    assert {n: (s / n).read_bytes() for n in cameras} == cameras
    r = cli("convert", s, "-o", s, "--format", "jpg", "--overwrite")
    assert r.exit_code == 0 and "3 done, 1 cached, 0 failed" in r.output, r.output
    assert all((s / n).read_bytes() != b for n, b in cameras.items())
    r = cli("convert", s, "-o", s, "--format", "jpg")  # now they are its own
    assert r.exit_code == 0 and "0 done, 4 cached, 0 failed" in r.output, r.output


@pytest.mark.parametrize("command,written", [("convert", ["x.png", "y.png"]),
                                             ("unpack", ["x.json", "x.png", "y.json", "y.png"])])
def test_a_users_file_of_the_same_name_in_the_output_is_kept(make_dng, tmp_path, monkeypatch, command, written):
    x, y = make_dng("x.dng"), make_dng("y.dng")
    user = tmp_path / "user"
    user.mkdir()
    mine = b"\x89PNG the user's own picture"
    (user / "x.png").write_bytes(mine)
    r = cli(command, x, y, "-o", user)
    assert r.exit_code == 1 and r.output.count("failed: ") == 1 and "Traceback" not in r.output, r.output
    assert f"failed: {user / 'x.png'}: already there and not written by raw2rgb {command}" in r.output
    assert (user / "x.png").read_bytes() == mine
    assert sorted(p.name for p in user.iterdir() if not p.name.startswith(".")) == \
        sorted({"x.png", "manifest.json", *(n for n in written if n.startswith("y"))})
    r = cli(command, x, y, "-o", user, "--overwrite")
    assert r.exit_code == 0 and "1 done, 1 cached, 0 failed" in r.output, r.output
    assert (user / "x.png").read_bytes() != mine
    # a run killed after writing a file and before recording it still owns that file on the rerun
    z = make_dng("z.dng")
    finish = stage._finish_item

    def killed(item, out_dir, key, inputs, result):  # unpack has written already; convert writes now
        if isinstance(result, stage.Deferred):
            result.finish()
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_finish_item", killed)
    assert cli(command, z, "-o", user).exit_code != 0  # interrupted
    assert (user / "z.png").is_file() and '"z"' not in (user / "manifest.json").read_text()
    monkeypatch.setattr(stage, "_finish_item", finish)
    r = cli(command, z, "-o", user)
    assert r.exit_code == 0 and "1 done, 0 cached, 0 failed" in r.output, r.output


# -- 9. a lock that is not a file ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_lock_that_is_a_folder_or_a_link_is_one_line_and_follows_nothing(make_dng, tmp_path, kind):
    x = make_dng("x.dng")
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_bytes(b"the user's notes\n")
    if kind == "folder":
        (out / ".raw2rgb.lock").mkdir()
    else:
        (out / ".raw2rgb.lock").symlink_to(victim)
    r = cli("convert", x, "-o", out)
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    why = "it is a folder" if kind == "folder" else "it is a symbolic link"
    assert f"{out / '.raw2rgb.lock'}: {why}, not raw2rgb's lock file; remove it" in r.output
    assert victim.read_bytes() == b"the user's notes\n" and not (out / "x.png").exists()


# -- 14. --replace-source removes the old source's data -----------------------------------------------------------

def test_replace_source_leaves_nothing_of_the_old_source_but_the_users_files(tmp_path):
    a, b, ds = tmp_path / "A", tmp_path / "B", tmp_path / "ds"
    synth.paired_dngs(a, size=(192, 256), scenes=synth.SCENES[:2])
    b.mkdir()
    for p in a.iterdir():  # the same frames under other names: another source, whose pairs align as well
        shutil.copy(p, b / f"b_{p.name}")
    args = ["--patch-size", "32", "--min-inliers", "8", "--until", "patches"]
    r = cli("prepare", a, "-o", ds, *args)
    assert r.exit_code == 0, r.output
    assert any(synth.SCENES[0] in p for p in _files(ds / "patches"))
    (ds / "notes.txt").write_bytes(b"mine")
    (ds / "unpack" / "keep.png").write_bytes(b"mine too")
    r = cli("prepare", b, "-o", ds, *args, "--replace-source")
    assert r.exit_code == 0, r.output
    old, new = set(synth.SCENES[:2]), {f"b_{s}" for s in synth.SCENES[:2]}
    for name in ("unpack", "patches"):
        files = _files(ds / name)
        assert not [p for p in files if old & {Path(p).stem, *Path(p).parts}], (name, sorted(files))
        assert {i["key"] for i in json.loads(files["manifest.json"])["items"]} == new
    assert {Path(p).stem for p in _files(ds / "unpack")} == new | {"manifest", "keep"}
    assert (ds / "notes.txt").read_bytes() == b"mine" and (ds / "unpack" / "keep.png").read_bytes() == b"mine too"
    assert set(json.loads((ds / "splits.json").read_text())["scenes"]) == new


# -- 15. a pixel limit, checked from the header ---------------------------------------------------------------------

def _grey_png(path: Path, width: int, height: int) -> Path:
    """A constant-black 8-bit grey PNG of any size, written in row chunks (a few hundred KB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, rows, idat = zlib.compressobj(1), bytes((1 + width) * 100), []
    for _ in range(height // 100):
        idat.append(z.compress(rows))
    idat.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


def test_a_mosaic_png_above_the_pixel_limit_is_refused_before_it_is_decoded(make_dng, tmp_path, monkeypatch):
    bomb = _grey_png(tmp_path / "bomb.png", 15000, 15000)  # 225 MP in a few hundred KB
    assert bomb.stat().st_size < 1 << 20
    good = make_dng("good.dng")
    decode, decoded = imagecodecs.png_decode, []

    def spy(data, *args, **kw):
        decoded.append(len(data))
        if len(data) == bomb.stat().st_size:  # before the fix: 225 MB, then GBs, to fail
            raise AssertionError("the bomb was decoded")
        return decode(data, *args, **kw)

    monkeypatch.setattr(imagecodecs, "png_decode", spy)
    r = cli("convert", bomb, good, "-o", tmp_path / "out", "-j", "1")  # in this process, where the spy is
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (f"failed: {bomb.resolve()}: 15000×15000 pixels (225 MP) is above raw2rgb's limit of 200 MP") in r.output
    assert bomb.stat().st_size not in decoded
    assert (tmp_path / "out" / "good.png").is_file() and "1 done, 0 cached, 1 failed" in r.output


def test_the_pixel_limit_admits_a_150_mp_frame_and_is_the_one_limit_for_targets(tmp_path, monkeypatch):
    assert rawio.MAX_PIXELS >= 151_000_000 and rawio.too_many_pixels(14204, 10652) is None  # 151-MP medium format
    assert rawio.too_many_pixels(14204, 10652, per_pixel=4) is not None  # a packed PNG: 4 sensor pixels each
    assert Image.MAX_IMAGE_PIXELS == rawio.MAX_PIXELS  # PIL's own check (at twice its limit) never comes first
    target = tmp_path / "t.png"
    Image.fromarray(np.full((96, 128, 3), 7, np.uint8)).save(target)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(target.read_bytes()[:60])  # the header alone: the check needs nothing more
    monkeypatch.setattr(rawio, "MAX_PIXELS", 96 * 128)
    assert pairs.read_rgb(target).shape == (96, 128, 3)
    monkeypatch.setattr(rawio, "MAX_PIXELS", 96 * 128 - 1)
    for path in (target, truncated):
        with pytest.raises(pairs.PairError, match=re.escape(f"{path}: 128×96 pixels (0 MP) is above raw2rgb's limit")):
            pairs.read_rgb(path)
