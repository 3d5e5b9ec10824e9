"""Faults, round 3 (issue 31), the readers' causes: profiles complete or refused (4), one shard check
for every reader (6), and a report on any val size (8). To be merged into tests/test_faults.py."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import profile, synth
from raw2rgb.pipeline.whitebalance import WhiteBalance
from tests.conftest import BLACK, WHITE, cli, flat_mosaic
from tests.model.conftest import make_shards, tiny_config

# -- 4. profiles complete or refused -------------------------------------------------------------------


@pytest.fixture(scope="module")
def profile_targets(tmp_path_factory) -> dict[str, Path]:
    """A scale-2 shards folder and a DNG for ``evaluate --profile`` and ``convert --profile``, and a
    complete frame-bright profile (the identity) that both accept."""
    tmp = tmp_path_factory.mktemp("profiles")
    coef = np.zeros((20, 3))
    coef[1:4] = np.eye(3)
    good = profile.Profile(model="poly3", coefficients=tuple(map(tuple, coef)), scale=2,
                           white_balance=WhiteBalance("frame-bright"), fitted_on={"split": "train"})
    return {"shards": make_shards(tmp / "s", {"train": 2, "val": 2}, size=16, scale=2),
            "dng": synth.write_dng(tmp / "flat.dng", flat_mosaic("RGGB"), synth.Camera(black=BLACK, white=WHITE)),
            "good": profile.save(good, tmp / "good.json")}


def _refusals(targets: dict[str, Path], path: Path, out: Path) -> list:
    return [cli("evaluate", targets["shards"], "--profile", path),
            cli("convert", targets["dng"], "-o", out, "--profile", path)]


def test_a_complete_profile_is_taken_by_evaluate_and_convert(profile_targets, tmp_path):
    """The control: the profile the refusals below damage is one both commands use."""
    ev, cv = _refusals(profile_targets, profile_targets["good"], tmp_path / "out")
    assert ev.exit_code == 0 and json.loads(ev.output)["white_balance"] == {"rule": "frame-bright", "gains": None}
    assert cv.exit_code == 0 and (tmp_path / "out" / "flat.png").is_file(), cv.output


FIELDS = ("model", "coefficients", "lut_size", "scale", "cameras", "white_balance", "source", "fitted_on",
          "white_balance.rule", "white_balance.gains")


@pytest.mark.parametrize("field", FIELDS)
def test_a_profile_without_a_field_is_refused_naming_it(profile_targets, tmp_path, field):
    """No silent defaults: without its white_balance a frame-bright profile scored under the dataset
    rule (10 dB lower), without its scale it claimed scale 2."""
    data = json.loads(profile_targets["good"].read_text())
    *parents, name = field.split(".")
    holder = data[parents[0]] if parents else data
    del holder[name]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    for r in _refusals(profile_targets, path, tmp_path / "out"):
        assert r.exit_code == 1, r.output
        assert r.output == f"Error: {path}: malformed profile (Profile.{field}: missing; a profile holds every " \
                           "field, refit it with raw2rgb profile fit)\n"
    assert not (tmp_path / "out" / "flat.png").exists()


@pytest.mark.parametrize("where,value,reason", [
    ("gains", [0, 1, 2], "Profile.white_balance.gains: 0.0 is out of range (accepted: 0.0625 <= gains <= 16"),
    ("gains", [-1.5, 1, 2], "Profile.white_balance.gains: -1.5 is out of range (accepted: 0.0625 <= gains <= 16"),
    ("gains", [float("nan"), 1, 2], "Profile.white_balance.gains: nan is not a finite number"),
    ("gains", [2, 2, 2], "Profile.white_balance.gains: [2.0, 2.0, 2.0] is not accepted"),
    ("coefficient", 1e308, "Profile.coefficients: 1e+308 is out of range (accepted: -1e+06 <= coefficients <= 1e+06)"),
])
def test_a_profile_with_absurd_numbers_is_refused_naming_the_field(profile_targets, tmp_path, where, value, reason):
    """Gains of 0 or below gave 7 dB and exit 0; a coefficient of 1e308 a LinAlgError traceback."""
    data = json.loads(profile_targets["good"].read_text())
    if where == "gains":
        data["white_balance"] = {"rule": "dataset", "gains": value}
    else:
        data["coefficients"][2][1] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    for r in _refusals(profile_targets, path, tmp_path / "out"):
        assert r.exit_code == 1 and r.output.startswith(f"Error: {path}: malformed profile ({reason}"), r.output
        assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "out" / "flat.png").exists()


# -- 6. one shard check for every reader ------------------------------------------------------------------

@pytest.fixture(scope="module")
def val0(tmp_path_factory) -> dict[str, Path]:
    """A tiny run trained on shards whose val split is empty (so it records no validation), and those shards."""
    tmp = tmp_path_factory.mktemp("val0")
    root = make_shards(tmp / "s", {"train": 4, "val": 0}, size=16)
    train(root, tmp / "run", tiny_config(stage1_epochs=1, stage2_epochs=0), Runtime(workers=0))
    return {"shards": root, "run": tmp / "run"}


DAMAGES = [("float raw", "raw is float32, the format stores uint16"),  # tests/test_faults.py, section 5
           ("3-channel raw", "the format stores (N, 4, h, w)"),
           ("rgb of another size", "rgb has shape"),
           ("no wb_frame", "no wb_frame dataset, the format stores it")]
READERS = {"inspect": lambda root, run, tmp: ("inspect", root),
           "train": lambda root, run, tmp: ("train", root, "-o", tmp / "run", "--preset", "tiny"),
           "evaluate": lambda root, run, tmp: ("evaluate", root, "--method", "isp", "-o", tmp / "eval"),
           "profile fit": lambda root, run, tmp: ("profile", "fit", root, "-o", tmp / "p.json"),
           "report": lambda root, run, tmp: ("report", run, "--dataset", root, "-o", tmp / "rep" / "report.html")}


def _damaged(tmp_path: Path, damage: str) -> Path:
    """Shards whose train and val shards both carry ``damage`` (each reader's default split is hit)."""
    root = make_shards(tmp_path / "s", {"train": 4, "val": 2}, size=16)
    for path in sorted(root.glob("*.h5")):
        with h5py.File(path, "r+") as f:
            raw, rgb = f["raw"][()], f["rgb"][()]
            if damage == "float raw":
                del f["raw"]
                f["raw"] = raw.astype(np.float32)
            elif damage == "3-channel raw":
                del f["raw"]
                f["raw"] = raw[:, :3]
            elif damage == "rgb of another size":
                del f["rgb"]
                f["rgb"] = rgb[:, :, :8, :8]
            else:
                del f["wb_frame"]
    return root


@pytest.mark.parametrize("damage,reason", DAMAGES)
def test_malformed_shards_are_refused_alike_by_every_reader(val0, tmp_path, damage, reason):
    """evaluate, profile fit and report went round the check inspect and train run: TypeError,
    KeyError, RuntimeError or LinAlgError tracebacks, or a profile fitted on the damage."""
    root = _damaged(tmp_path, damage)
    for reader, args in READERS.items():
        r = cli(*args(root, val0["run"], tmp_path))
        assert r.exit_code == 1, (reader, r.output)
        assert r.output.startswith(f"Error: {root / 'train-00000.h5'}: ") and reason in r.output, (reader, r.output)
        assert r.output.count("\n") == 1 and "Traceback" not in r.output, (reader, r.output)
    assert not any((tmp_path / name).exists() for name in ("eval", "p.json", "rep")), sorted(tmp_path.iterdir())


# -- 8. a report on any val size -------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, 3])
def test_report_shows_a_val_split_of_any_size_and_says_how_many(val0, tmp_path, count):
    """``contact_sheet`` picked range(0, 4): an IndexError below four samples. The run recorded no
    validation, whose empty legend was a matplotlib warning on the user's terminal."""
    root = val0["shards"] if count == 0 else make_shards(tmp_path / "s", {"train": 4, "val": count}, size=16)
    out = tmp_path / "rep" / "report.html"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("report", val0["run"], "--dataset", root, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.output == f"wrote {out}" + (f" and {out.with_suffix('.png')}" if count else "") + "\n"
    assert [str(w.message) for w in caught if "matplotlib" in w.filename or "legend" in str(w.message)] == []
    page = out.read_text()
    heading = re.search(r"<h2>Held-out samples \(val split\)</h2><p>([^<]*)</p>", page)
    if count == 0:
        assert heading.group(1) == "The val split holds no samples: no contact sheet and no metrics on it " \
                                   "(raw2rgb report --split names another)."
        assert "<table>" not in page and not out.with_suffix(".png").exists()
        assert re.findall(r'<img src="([^"]+)"', page) == ["report_files/training_curve.png"]
        return
    assert heading.group(1).startswith(f"{count} of the split's {count} samples, one a row: RAW preview")
    sheet = Image.open(out.with_suffix(".png"))
    assert sheet.size[1] == count * 160 + (count - 1) * 40  # 16² tiles shown 10× larger, 4-px gaps
    images = re.findall(r"<td>(\d+)</td></tr>", page)
    assert images == [str(count)] * 3  # classical pipeline, fitted profile, model: each on every val sample


def test_a_report_on_the_train_split_never_calls_it_held_out(val0, tmp_path):
    out = tmp_path / "report.html"
    r = cli("report", val0["run"], "--dataset", val0["shards"], "--split", "train", "-o", out)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Held-out" not in page and "<h2>Training samples (train split)</h2><p>4 of the split's 4 samples" in page
