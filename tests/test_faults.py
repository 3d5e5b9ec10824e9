"""A user's real habits and a hostile user's files: moved folders, reruns, two runs at once, output
folders inside inputs, full disks, malformed shards and configs, interrupts, links out of a folder."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from raw2rgb import errors
from raw2rgb.config import FieldError
from raw2rgb.errors import InputError
from raw2rgb.files import FolderLock, atomic_path, write_json
from raw2rgb.model import checkpoint, prior_fit, run
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig
from raw2rgb.model.recipe import TrainConfig, TrainError
from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import pairs, profile, rawio, synth
from raw2rgb.pipeline import stage as stage_module
from raw2rgb.pipeline.stage import Stage
from raw2rgb.pipeline.whitebalance import WhiteBalance
from tests.conftest import BLACK, WHITE, cli, flat_mosaic
from tests.model.conftest import make_shards, tiny_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".raw2rgb.lock"}


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shoot") / "shootA"
    synth.sample_dngs(d, size=(96, 128))  # 4 DNGs, each with a JPEG beside it
    return d


@pytest.fixture(scope="module")
def pairs_src(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs") / "src"
    synth.paired_dngs(d, size=(192, 256), scenes=synth.SCENES[:3])
    return d


# -- 1. moved, renamed, copied folders ------------------------------------------------------------

def test_convert_after_moving_the_shoot_finds_its_work_again(shoot, tmp_path):
    a = tmp_path / "A"
    shutil.copytree(shoot, a)
    assert cli("convert", a, "-o", tmp_path / "cv").exit_code == 0
    before = _files(tmp_path / "cv")
    b = tmp_path / "B"
    a.rename(b)
    r = cli("convert", b, "-o", tmp_path / "cv")
    assert r.exit_code == 0, r.output
    assert "0 done, 4 cached" in r.output
    after = _files(tmp_path / "cv")
    assert {k: v for k, v in after.items() if not k.endswith("manifest.json")} == \
        {k: v for k, v in before.items() if not k.endswith("manifest.json")}


def test_prepare_after_moving_or_copying_the_dataset_redoes_nothing(pairs_src, tmp_path):
    args = ["--patch-size", "32", "--min-inliers", "8", "--split", "0.67,0.33,0", "--saliency-method",
            "spectral-residual"]
    assert cli("prepare", pairs_src, "-o", tmp_path / "ds", *args).exit_code == 0
    shutil.move(tmp_path / "ds", tmp_path / "moved")
    r = cli("prepare", pairs_src, "-o", tmp_path / "moved", *args)
    assert r.exit_code == 0, r.output
    for stage in ("unpack", "patches", "saliency", "shards"):
        assert f"{stage}: 0 done" in r.output, r.output
    subprocess.run(["cp", "-a", str(tmp_path / "moved"), str(tmp_path / "copy")], check=True)
    r = cli("prepare", pairs_src, "-o", tmp_path / "copy", *args)
    assert r.exit_code == 0 and r.output.count(": 0 done") == 4, r.output


# -- 2. --force never deletes what a run did not write ---------------------------------------------

def test_train_force_in_a_folder_of_photos_deletes_nothing(tmp_path):
    root = make_shards(tmp_path / "s", {"train": 4, "val": 2})
    p = tmp_path / "p"
    (p / "samples").mkdir(parents=True)
    (p / "samples" / "photo").write_text("x")
    r = cli("train", root, "-o", p, "--preset", "tiny", "--force", "--epochs", "1,0", "--perceptual-weight", "0")
    assert r.exit_code == 1 and "not empty and holds no run" in r.output and "Traceback" not in r.output
    assert (p / "samples" / "photo").read_text() == "x"


# -- 3. outputs inside inputs, ordinary pictures beside RAW files ---------------------------------------

def test_unpack_into_a_folder_inside_its_input_never_ingests_its_outputs(shoot, tmp_path):
    s = tmp_path / "shoot"
    shutil.copytree(shoot, s)
    for _ in range(3):
        r = cli("unpack", s, "-o", s / "packed")
        assert r.exit_code == 0, r.output
    assert not (s / "packed" / "packed").exists()
    assert sorted(p.name for p in (s / "packed").glob("*.png")) == sorted(p.stem + ".png" for p in s.glob("*.dng"))


def test_convert_into_its_own_input_folder_twice_and_pictures_beside_raws(shoot, tmp_path):
    s = tmp_path / "same"
    shutil.copytree(shoot, s)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(s / "holiday.png")  # an ordinary picture
    for rerun in (False, True):
        r = cli("convert", s, "-o", s / "out")
        assert r.exit_code == 0, r.output
        assert ("0 done, 4 cached, 0 failed" if rerun else "4 done") in r.output
    for jpg in s.glob("*.jpg"):  # the camera's JPEGs: convert never replaces them (round 3, cause 2)
        jpg.unlink()
    for rerun in (False, True):
        r = cli("convert", s, "-o", s, "--format", "jpg")
        assert r.exit_code == 0, r.output
        assert ("0 done, 4 cached, 0 failed" if rerun else "4 done, 0 cached, 0 failed") in r.output


def test_a_second_shoot_into_the_same_folder_keeps_the_first_on_record(shoot, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    shutil.copytree(shoot, first)
    second.mkdir()
    shutil.copy(next(shoot.glob("*.dng")), second / "other.dng")
    assert cli("convert", first, "-o", tmp_path / "cv").exit_code == 0
    assert cli("convert", second, "-o", tmp_path / "cv").exit_code == 0
    r = cli("convert", first, "-o", tmp_path / "cv")
    assert "0 done, 4 cached" in r.output, r.output
    keys = {i["key"] for i in json.loads((tmp_path / "cv" / "manifest.json").read_text())["items"]}
    assert "other" in keys and len(keys) == 5


# -- 4. one writer per folder --------------------------------------------------------------------------

HOLD = ("import sys, time\nfrom raw2rgb.files import FolderLock\nwith FolderLock(sys.argv[1], 'raw2rgb train'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n")


@pytest.fixture
def holder():
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_train_or_prepare_on_the_same_folder_is_refused(holder, pairs_src, tmp_path):
    root = make_shards(tmp_path / "s", {"train": 4, "val": 2})
    proc = holder(tmp_path / "run")
    r = cli("train", root, "-o", tmp_path / "run", "--preset", "tiny", "--epochs", "1,0", "--perceptual-weight", "0")
    assert r.exit_code == 1 and f"in use by pid {proc.pid}" in r.output
    assert not (tmp_path / "run" / "stats.jsonl").exists()
    proc = holder(tmp_path / "ds")
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", "--patch-size", "32")
    assert r.exit_code == 1 and f"in use by pid {proc.pid}" in r.output
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [".raw2rgb.lock"]  # nothing touched


# -- 5. malformed shards: one check for inspect and train --------------------------------------------

@pytest.mark.parametrize("damage,reason", [("float raw", "raw is float32, the format stores uint16"),
                                           ("3-channel raw", "the format stores (N, 4, h, w)"),
                                           ("rgb of another size", "rgb has shape")])
def test_malformed_shards_are_refused_by_inspect_and_train_alike(tmp_path, damage, reason):
    root = make_shards(tmp_path / "s", {"train": 4, "val": 2}, size=16)
    _damage(root / "train-00000.h5", damage)
    for args in (("inspect", root), ("train", root, "-o", tmp_path / "run", "--preset", "tiny")):
        r = cli(*args)
        assert r.exit_code == 1 and "train-00000.h5" in r.output and reason in r.output, r.output
        assert "Traceback" not in r.output


def _damage(path: Path, damage: str) -> None:
    """Give a training shard one flaw: float or 3-channel raw, rgb of another size, no wb_frame."""
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


# -- 6. empty results are failures ---------------------------------------------------------------------

@pytest.mark.parametrize("args,reason", [(("--layout", "zrr"), "no pairs found for layout zrr"),
                                         (("--patch-size", "100000"), "no patch was kept"),
                                         (("--min-score", "5"), "no patch was kept"),
                                         (("--crop", "12"), "needs a multiple of 8")])
def test_prepare_that_builds_nothing_trainable_fails(pairs_src, tmp_path, args, reason):
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", "--patch-size", "32", *args)
    assert r.exit_code == 1 and reason in r.output and "Traceback" not in r.output, r.output


# -- 7. a full disk ------------------------------------------------------------------------------------

def test_disk_full_while_checkpointing_is_named_and_the_last_checkpoint_kept(tmp_path, monkeypatch):
    root = make_shards(tmp_path / "s", {"train": 8, "val": 2})
    cfg, rt = tiny_config(), Runtime(workers=0, checkpoint_every=1)
    train(root, tmp_path / "run", cfg, Runtime(workers=0, max_steps=2))
    kept = (tmp_path / "run" / "checkpoints" / "latest.pt").read_bytes()

    def full(obj, f, *a, **kw):  # what torch's zip writer says when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(checkpoint.CheckpointError, match="latest.pt: cannot save the checkpoint \\(no space left"):
        train(root, tmp_path / "run", cfg, rt)
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").read_bytes() == kept
    assert not list((tmp_path / "run" / "checkpoints").glob(".*partial"))


# -- 8. --config ----------------------------------------------------------------------------------------

def test_config_is_merged_with_preset_and_options_and_checked_field_by_field(tmp_path):
    root = make_shards(tmp_path / "s", {"train": 4, "val": 2})
    (tmp_path / "c.json").write_text(json.dumps({"lr_g": 3e-4, "stage2_epochs": 7, "weights": {"attention": 0.25}}))
    r = cli("train", root, "-o", tmp_path / "r", "--preset", "tiny", "--config", tmp_path / "c.json",
            "--epochs", "2,3", "--dry-run")
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)["config"]
    assert cfg["preset"] == "tiny" and cfg["generator"]["base"] == 16  # the preset
    assert cfg["lr_g"] == 3e-4 and cfg["weights"]["attention"] == 0.25  # the file, over it
    assert (cfg["stage1_epochs"], cfg["stage2_epochs"]) == (2, 3)  # the options, over both
    (tmp_path / "t.json").write_text(json.dumps({"batch_size": "8"}))
    r = cli("train", root, "-o", tmp_path / "r", "--config", tmp_path / "t.json", "--dry-run")
    assert r.exit_code == 1 and 't.json: TrainConfig.batch_size: "8" is not int' in r.output
    (tmp_path / "bad.json").write_text("{oops")
    r = cli("train", root, "-o", tmp_path / "r", "--config", tmp_path / "bad.json", "--dry-run")
    assert r.exit_code == 1 and "bad.json: not a readable JSON file" in r.output and "Traceback" not in r.output


# -- 9. interrupts exit non-zero, after the checkpoint ----------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_train_exits_128_plus_the_signal_after_its_checkpoint(tmp_path, sig, code):
    root = make_shards(tmp_path / "s", {"train": 16, "val": 2})
    cmd = [sys.executable, "-m", "raw2rgb", "train", str(root), "-o", str(tmp_path / "run"), "--preset", "tiny",
           "--epochs", "50,0", "--batch-size", "2", "--perceptual-weight", "0", "--workers", "2", "--log-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    stats = tmp_path / "run" / run.STATS
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not stats.is_file() or len(stats.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C reaches the loader's workers too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.count("stopping after this step") == 1  # once, not once per process
    assert "interrupted at step" in err
    blob = checkpoint.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert blob["progress"]["step"] >= 3


# -- 10. one path-safety rule ------------------------------------------------------------------------------

def _pairs_source(tmp_path: Path) -> Path:
    """A pairs-layout SRC (raw/, rgb/) of two virtual-camera scenes."""
    src = tmp_path / "src"
    synth.paired_dngs(tmp_path / "made", size=(128, 192), scenes=synth.SCENES[:2])
    (src / "raw").mkdir(parents=True)
    (src / "rgb").mkdir()
    for p in (tmp_path / "made").glob("*.dng"):
        shutil.copy(p, src / "raw" / p.name)
        shutil.copy(p.with_suffix(".jpg"), src / "rgb" / p.with_suffix(".jpg").name)
    return src


def test_a_link_out_of_the_source_is_refused_in_the_pairs_layout(tmp_path):
    src = _pairs_source(tmp_path)
    secret = tmp_path / "secret.dng"
    secret.write_bytes(b"not yours")
    (src / "raw" / "leak.dng").symlink_to(secret)
    (src / "rgb" / "leak.jpg").symlink_to(next((tmp_path / "made").glob("*.jpg")))
    r = cli("prepare", src, "-o", tmp_path / "ds", "--patch-size", "32", "--min-inliers", "8", "--until", "unpack")
    assert "leak.dng: leads outside" in r.output and "refused" in r.output
    assert not (tmp_path / "ds" / "unpack" / "leak.png").exists()


def test_a_tampered_manifest_is_refused_before_anything_reads_it(pairs_src, tmp_path):
    args = ["--patch-size", "32", "--min-inliers", "8", "--saliency-method", "spectral-residual"]
    assert cli("prepare", pairs_src, "-o", tmp_path / "ds", *args).exit_code == 0
    path = tmp_path / "ds" / "patches" / "manifest.json"
    m = json.loads(path.read_text())
    item = m["items"][0]
    rel = next(iter(item["outputs"]))
    item["outputs"] = {"../../../../etc/passwd" if k == rel else k: v for k, v in item["outputs"].items()}
    write_json(path, m)
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", *args)
    assert r.exit_code == 1 and "manifest.json: output ../../../../etc/passwd" in r.output
    assert "lies outside the folder; refused" in r.output


# -- also ---------------------------------------------------------------------------------------------------

def test_a_raw_with_no_signal_is_warned(make_dng, tmp_path):
    dng = make_dng("blank.dng", "RGGB", mosaic=np.zeros((64, 96), np.uint16))
    r = cli("convert", dng, "-o", tmp_path / "out")
    assert r.exit_code == 0 and "blank.dng: no signal" in r.output


def test_folder_lock_file_is_the_only_trace_of_a_lock(tmp_path):
    with FolderLock(tmp_path / "x"):
        pass
    assert [p.name for p in (tmp_path / "x").iterdir()] == [".raw2rgb.lock"]
    assert (tmp_path / "x" / ".raw2rgb.lock").read_bytes() == b""


# == round 2 ================================================================================================

# -- 11. configs: every field checked, at any depth, after merging preset, file and options ---------------

@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("small") / "s", {"train": 4, "val": 2}, size=16)


@pytest.mark.parametrize("fields,reason", [
    ({"generator": 5}, "TrainConfig.generator: 5 is not GeneratorConfig"),
    ({"generator": [1]}, "TrainConfig.generator: [1] is not GeneratorConfig"),
    ({"weights": 0.5}, "TrainConfig.weights: 0.5 is not LossWeights"),
    ({"generator": {"base": "8"}}, 'TrainConfig.generator.base: "8" is not int'),
    ({"generator": {"width": 8}}, "TrainConfig.generator: unknown fields width"),
    ({"betas": 0.5}, "TrainConfig.betas: 0.5 is not tuple"),
])
def test_a_mistyped_nested_config_is_refused_before_any_work(small_shards, tmp_path, fields, reason):
    (tmp_path / "c.json").write_text(json.dumps(fields))
    for dry in ((), ("--dry-run",)):
        r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--config", tmp_path / "c.json",
                *dry)
        assert r.exit_code == 1 and f"c.json: {reason}" in r.output, r.output
        assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,reason", [
    ('{"ema": 1.5}', "TrainConfig.ema: 1.5 is out of range (accepted: 0 <= ema < 1)"),
    ('{"ema": NaN}', "TrainConfig.ema: nan is not a finite number (accepted: 0 <= ema < 1)"),
    ('{"stage1_epochs": -2}', "TrainConfig.stage1_epochs: -2 is out of range (accepted: stage1_epochs >= 0)"),
    ('{"stage1_epochs": 0, "stage2_epochs": 0}', "TrainConfig.stage1_epochs: 0 with stage2_epochs 0 would train"),
    ('{"batch_size": 0}', "TrainConfig.batch_size: 0 is out of range (accepted: batch_size >= 1)"),
    ('{"lr_stage1": -1}', "TrainConfig.lr_stage1: -1.0 is out of range (accepted: lr_stage1 > 0)"),
    ('{"lr_g": Infinity}', "TrainConfig.lr_g: inf is not a finite number"),
    ('{"betas": [0.5, 1.5]}', "TrainConfig.betas: 1.5 is out of range (accepted: 0 <= betas < 1)"),
    ('{"generator": {"base": 0}}', "TrainConfig.generator.base: 0 is out of range (accepted: 1 <= base <= 256)"),
    ('{"generator": {"base": -4}}', "TrainConfig.generator.base: -4 is out of range"),
    ('{"generator": {"norm": "batch"}}', 'TrainConfig.generator.norm: "batch" is not one of instance, none'),
    ('{"discriminator": {"base": 0}}', "TrainConfig.discriminator.base: 0 is out of range"),
    ('{"weights": {"perceptual": -1}}', "TrainConfig.weights.perceptual: -1.0 is out of range"),
    ('{"crop": 4}', "TrainConfig.crop: 4 is out of range (accepted: crop >= 8)"),
    ('{"lr_decay": "linear"}', 'TrainConfig.lr_decay: "linear" is not one of step, cosine'),
])
def test_out_of_range_config_values_are_refused_naming_file_field_and_range(small_shards, tmp_path, text, reason):
    (tmp_path / "c.json").write_text(text)
    r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--config", tmp_path / "c.json")
    assert r.exit_code == 1 and f"c.json: {reason}" in r.output, r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_the_options_are_checked_by_the_same_rules(small_shards, tmp_path):
    r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--perceptual-weight", "nan")
    assert r.exit_code == 2 and "'--perceptual-weight': nan is not a finite number" in r.output, r.output
    r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--epochs", "0,0")
    assert r.exit_code == 1 and "would train nothing" in r.output, r.output
    assert not (tmp_path / "run").exists()


# -- 12. prepare's options: non-finite numbers never switch a filter off ------------------------------------

@pytest.mark.parametrize("args,reason", [
    (("--split", "nan,0.1,0"), "'--split': nan is not a finite number"),
    (("--split", "inf,0.1,0"), "'--split': inf is not a finite number"),
    (("--split", "0.9,0.1"), "3 comma-separated numbers expected"),
    (("--min-score", "nan"), "'--min-score': nan is not a finite number"),
    (("--max-shift", "nan"), "'--max-shift': nan is not a finite number"),
    (("--min-mean", "nan"), "'--min-mean': nan is not a finite number"),
])
def test_prepare_refuses_non_finite_options_before_any_work(pairs_src, tmp_path, args, reason):
    for dry in (("--dry-run",), ()):
        r = cli("prepare", pairs_src, "-o", tmp_path / "ds", "--patch-size", "32", *args, *dry)
        assert r.exit_code in (1, 2) and reason in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "ds").exists()


# -- 13. a path mistake at any output: one line, from one check ---------------------------------------------

@pytest.fixture(scope="module")
def places(tmp_path_factory, shoot) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("places")
    (root / "afile").write_text("x")
    (root / "adir").mkdir()
    return {"file": root / "afile", "dir": root / "adir", "dng": next(shoot.glob("*.dng"))}


OUTPUTS = {  # command, its arguments before the output, the output option, whether the output is a folder
    "convert": (("convert", "{dng}"), "-o", True),
    "unpack": (("unpack", "{dng}"), "-o", True),
    "saliency": (("saliency", "{dng}"), "-o", True),
    "prepare": (("prepare", "{dir}"), "-o", True),
    "train": (("train", "{dir}"), "-o", True),
    "shards": (("shards", "{dir}", "{dir}"), "-o", True),
    "evaluate": (("evaluate", "{dir}"), "-o", True),
    "synth": (("synth",), "-o", True),
    "profile fit": (("profile", "fit", "{dir}"), "-o", False),
    "export onnx": (("export", "{file}"), "--onnx", False),
    "export pt2": (("export", "{file}"), "--pt2", False),
    "report": (("report", "{dir}"), "-o", False),
    "salgan import-weights": (("salgan", "import-weights", "{file}"), "-o", False),
}


@pytest.mark.parametrize("command", OUTPUTS)
@pytest.mark.parametrize("mistake", ["under a file", "the wrong kind"])
def test_an_output_under_a_file_or_of_the_wrong_kind_is_one_line(places, command, mistake):
    args, option, folder = OUTPUTS[command]
    args = [a.format(**{k: str(v) for k, v in places.items()}) for a in args]
    if mistake == "under a file":
        out, reason = places["file"] / "sub", f"{places['file']} is a file, not a folder"
    else:
        out = places["file"] if folder else places["dir"]
        reason = "is a file, not a folder" if folder else "is a folder, not a file"
    r = cli(*args, option, out)
    assert r.exit_code == 1 and reason in r.output and str(out) in r.output, r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert places["file"].read_text() == "x" and not any(places["dir"].iterdir())


# -- 14. a checkpoint corrupted on disk is refused before use ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tinyrun")
    root = make_shards(tmp / "s", {"train": 4, "val": 2}, size=16)
    train(root, tmp / "run", tiny_config(stage1_epochs=1, stage2_epochs=0), Runtime(workers=0))
    return tmp / "run"


def _flip_bytes_of(path: Path, tensor: torch.Tensor, n: int = 256) -> None:
    """Flip ``n`` bytes inside every copy of ``tensor``'s values in the file (torch stores them raw)."""
    data, needle = bytearray(path.read_bytes()), tensor.contiguous().numpy().tobytes()
    start, hits = 0, 0
    while (at := data.find(needle, start)) >= 0:
        for i in range(min(n, len(needle))):
            data[at + i] ^= 0xFF
        start, hits = at + len(needle), hits + 1
    assert hits
    path.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_is_refused_by_convert_evaluate_export_and_resume(tiny_run, shoot, tmp_path):
    good = tiny_run / "checkpoints" / "final.pt"
    blob = checkpoint.load(good)
    assert "G_ema" in blob and set(blob["sha256"]) >= {"G", "G_ema", "D", "opt_G", "meta"}
    bad = tmp_path / "bad.pt"
    shutil.copy(good, bad)
    biggest = max(blob["G_ema"].values(), key=lambda t: t.numel())
    _flip_bytes_of(bad, biggest)
    for args in (("convert", next(shoot.glob("*.dng")), "-o", tmp_path / "cv", "--checkpoint", bad),
                 ("evaluate", tiny_run.parent / "s", "--checkpoint", bad),
                 ("export", bad, "--pt2", tmp_path / "g.pt2")):
        r = cli(*args)
        assert r.exit_code == 1 and f"{bad}: corrupted (G_ema does not match the content hash" in r.output, r.output
        assert r.output.count("\n") == 1
    assert not (tmp_path / "g.pt2").exists() and not list((tmp_path / "cv").glob("*.png"))
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.load(bad)
    r = cli("convert", next(shoot.glob("*.dng")), "-o", tmp_path / "ok", "--checkpoint", good)
    assert r.exit_code == 0, r.output


def test_a_checkpoint_without_hashes_loads_with_a_warning(tiny_run, tmp_path, caplog):
    blob = torch.load(tiny_run / "checkpoints" / "final.pt", weights_only=True)
    del blob["sha256"]
    old = tmp_path / "old.pt"
    torch.save(blob, old)
    with caplog.at_level("WARNING"):
        assert checkpoint.load(old)["progress"] == blob["progress"]
        checkpoint.load_generator_state(old)
    assert caplog.text.count(f"{old}: no content hashes") == 1  # once per file


# -- 15. a dataset keeps to its SRC ----------------------------------------------------------------------------

def test_prepare_from_another_src_is_refused_and_destroys_nothing(pairs_src, tmp_path):
    args = ["--patch-size", "32", "--min-inliers", "8", "--until", "patches"]
    assert cli("prepare", pairs_src, "-o", tmp_path / "ds", *args).exit_code == 0
    before = _files(tmp_path / "ds")
    other = tmp_path / "other"
    shutil.copytree(pairs_src, other)
    for p in sorted(other.glob("*"))[:2]:  # one scene fewer: another source
        p.unlink()
    for dry in ((), ("--dry-run",)):
        r = cli("prepare", other, "-o", tmp_path / "ds", *args, *dry)
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert f"{tmp_path / 'ds'} was prepared from {pairs_src.resolve()}, not {other.resolve()}" in r.output
        assert "--replace-source" in r.output
    assert _files(tmp_path / "ds") == before
    moved = tmp_path / "moved"
    shutil.copytree(pairs_src, moved)  # the same pairs elsewhere: the same source, moved
    r = cli("prepare", moved, "-o", tmp_path / "ds", *args)
    assert r.exit_code == 0 and "unpack: 0 done" in r.output, r.output
    r = cli("prepare", other, "-o", tmp_path / "ds", *args, "--replace-source")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ds" / "source.json").read_text())["src"] == str(other.resolve())


# -- 16. export is quiet -----------------------------------------------------------------------------------------

def test_export_onnx_prints_one_line_whatever_the_onnx_packages_log(tiny_run, tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "g.onnx"
    proc = subprocess.run([sys.executable, "-m", "raw2rgb", "-q", "export", str(tiny_run), "--onnx", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"wrote {out}", proc.stdout[-2000:]
    assert proc.stderr.strip() == "", proc.stderr[-2000:]


# -- 17. messages state only what is true ------------------------------------------------------------------------

def test_a_nan_loss_before_any_checkpoint_promises_none(small_shards, tmp_path, monkeypatch):
    from raw2rgb.model import terms
    from raw2rgb.model.train import TrainError

    monkeypatch.setattr(terms, "l1", lambda a, b: (a - b).abs().mean() * float("nan"))
    with pytest.raises(TrainError, match="became NaN") as e:
        train(small_shards, tmp_path / "run", tiny_config(), Runtime(workers=0, log_every=1))
    assert "no checkpoint had been written yet" in str(e.value) and "is kept" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


# -- 18. inputs skipped are named ---------------------------------------------------------------------------------

def test_broken_links_and_fifos_in_an_input_folder_are_listed(shoot, tmp_path):
    s = tmp_path / "shoot"
    shutil.copytree(shoot, s)
    (s / "gone.dng").symlink_to(tmp_path / "deleted.dng")
    os.mkfifo(s / "pipe.dng")
    r = cli("convert", s, "-o", tmp_path / "out")
    assert r.exit_code == 0 and "4 done" in r.output, r.output
    assert "skipped 2 inputs that cannot be read as files" in r.output
    assert f"{s / 'gone.dng'} (a broken symbolic link to {tmp_path / 'deleted.dng'})" in r.output
    assert f"{s / 'pipe.dng'} (a FIFO)" in r.output


def test_broken_links_in_a_pairs_source_are_listed(tmp_path):
    src = _pairs_source(tmp_path)
    (src / "raw" / "gone.dng").symlink_to(tmp_path / "deleted.dng")
    r = cli("prepare", src, "-o", tmp_path / "ds", "--until", "unpack")
    assert f"{src / 'raw' / 'gone.dng'}: a broken symbolic link to {tmp_path / 'deleted.dng'}; skipped" in r.output
    assert "unpack: 2 done" in r.output, r.output


# == round 3 ================================================================================================

# shared by its sections

TINY = ("--preset", "tiny", "--epochs", "2,0", "--batch-size", "4", "--perceptual-weight", "0")


def _one_line(r, exit_code: int = 1) -> str:
    assert r.exit_code == exit_code and r.output.count("\n") == 1 and "Traceback" not in r.output, r.output
    return r.output.strip()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("r3shards")
    return {"a": make_shards(tmp / "a", {"train": 4, "val": 2}, size=16),
            "b": make_shards(tmp / "b", {"train": 4, "val": 2}, size=16, seed=5)}


# -- 19. round 3, cause 1: a CSV scene is a name, checked before any write -----------------------------------------

def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if p != skip and skip not in p.parents}


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


# -- 20. round 3, cause 2: convert and unpack never replace a file they did not write ------------------------------

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
    finish = stage_module._finish_item

    def killed(item, out_dir, key, inputs, result):  # unpack has written already; convert writes now
        if isinstance(result, stage_module.Deferred):
            result.finish()
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_module, "_finish_item", killed)
    assert cli(command, z, "-o", user).exit_code != 0  # interrupted
    assert (user / "z.png").is_file() and '"z"' not in (user / "manifest.json").read_text()
    monkeypatch.setattr(stage_module, "_finish_item", finish)
    r = cli(command, z, "-o", user)
    assert r.exit_code == 0 and "1 done, 0 cached, 0 failed" in r.output, r.output


# -- 21. round 3, cause 3: a run's checkpoint belongs to its run ---------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards) -> dict[str, Path]:
    """Four interrupted runs (one step each, of two epochs): this run, and another seed, another dataset and
    another architecture."""
    tmp = tmp_path_factory.mktemp("r3runs")
    (tmp / "narrow.json").write_text(json.dumps({"generator": {"base": 8}}))
    made = {"this": (shards["a"], ()), "seed": (shards["a"], ("--seed", "1")), "dataset": (shards["b"], ()),
            "architecture": (shards["a"], ("--config", tmp / "narrow.json"))}
    for name, (data, extra) in made.items():
        r = cli("train", data, "-o", tmp / name, *TINY, *extra, "--max-steps", "1")
        assert r.exit_code == 0 and "reached --max-steps 1" in r.output, r.output
    return {name: tmp / name for name in made}


@pytest.mark.parametrize("other,differs", [
    ("seed", "(seed 1, this run 0)"),
    ("dataset", "(dataset_key "),
    ("architecture", "(generator.base 8, this run 16)"),
])
def test_another_runs_checkpoint_is_refused_naming_the_field_and_nothing_is_written(runs, shards, tmp_path, other,
                                                                                     differs):
    mine = tmp_path / "run"
    shutil.copytree(runs["this"], mine)
    shutil.copy(runs[other] / "checkpoints" / "latest.pt", mine / "checkpoints" / "latest.pt")
    before, theirs = _files(mine), _files(runs[other])
    line = _one_line(cli("train", shards["a"], "-o", mine, *TINY, "--max-steps", "2"))
    assert line.startswith(f"Error: {mine / 'checkpoints' / 'latest.pt'}: belongs to another run {differs}"), line
    assert "--force" in line
    assert _files(mine) == before and _files(runs[other]) == theirs  # the swapped file too, byte for byte


def test_a_checkpoint_records_its_dataset_and_its_own_run_resumes(runs, shards, tmp_path):
    from raw2rgb.model import checkpoint
    from raw2rgb.pipeline.shards import dataset_key

    blob = checkpoint.load(runs["this"] / "checkpoints" / "latest.pt")
    assert blob["run"]["dataset_key"] == dataset_key(shards["a"]) == run.read_identity(runs["this"])["dataset_key"]
    mine = tmp_path / "run"
    shutil.copytree(runs["this"], mine)
    r = cli("train", shards["a"], "-o", mine, *TINY, "--max-steps", "2")
    assert r.exit_code == 0 and "reached --max-steps 2 at step 2" in r.output, r.output


# -- 22. round 3, cause 4: profiles complete or refused ------------------------------------------------------------

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


# -- 23. round 3, cause 5: a full disk or out of memory during a write ---------------------------------------------

def _raise_chained(inner: BaseException, outer: BaseException):
    """Raise ``outer`` while handling ``inner``, as torch's zip writer does when its close fails too."""
    try:
        raise inner
    except type(inner):
        raise outer  # noqa: B904 - the implicit chain is the point


# The texts are those the writers print (torch 2.x and h5py 3.x under a full disk, an RLIMIT_FSIZE, a quota).

H5_WRITE = ("Can't synchronously write data (file write failed: time = Mon Dec  7 19:16:55 2026\n, filename = "
            "'/data/ds/shards/.train-00002.h5.4242.partial', file descriptor = 3, errno = 28, error message = 'No "
            "space left on device', buf = 0x559a21c26240, total write size = 702048, bytes this sub-write = 702048, "
            "offset = 100000)")
H5_CLOSE = ("Can't decrement id ref count (unable to extend file properly, errno = 28, error message = 'No space "
            "left on device')")
TORCH_POS = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
TORCH_WRITE = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write "
               "failed")
CPU_ALLOC = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
             "1048576 bytes.")
CPU_ALLOC_OLD = ("[enforce fail at CPUAllocator.cpp:64] . DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 1048576 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x.png"), "/d/x.png: no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (OSError(errno.ENOSPC, H5_WRITE), "/data/ds/shards/.train-00002.h5.4242.partial: no space left on device"),
    (RuntimeError(H5_CLOSE), "no space left on device"),
    (RuntimeError(TORCH_POS), errors.TORCH_SHORT_WRITE),
    (RuntimeError(TORCH_WRITE), errors.TORCH_SHORT_WRITE),
    (RuntimeError(CPU_ALLOC), "out of memory"),
    (RuntimeError(CPU_ALLOC_OLD), "out of memory"),
    (MemoryError("Unable to allocate 224. GiB for an array with shape (100000, 100000, 3)"), "out of memory"),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of GPU memory"),
])
def test_every_form_of_a_full_disk_or_of_no_memory_is_one_line(error, reason):
    assert errors.environment_message(error) == reason
    chained = RuntimeError("basic_ios::clear: iostream error")  # what torch raises first, then closes the file
    chained.__context__ = error
    assert errors.environment_message(chained) == reason
    quota_under_torch = RuntimeError(TORCH_WRITE)  # torch's words are a guess: an errno in the chain wins
    quota_under_torch.__context__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert errors.environment_message(quota_under_torch) == "disk quota exceeded"
    assert errors.environment_message(RuntimeError("unexpected output shape")) is None
    assert errors.environment_message(OSError(errno.ENOENT, "No such file")) is None


@pytest.fixture(scope="module")
def tiny_cli_run(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset and a RUN folder trained one step by the CLI (latest.pt written)."""
    from tests.model.conftest import make_shards

    tmp = tmp_path_factory.mktemp("run")
    root = make_shards(tmp / "s", {"train": 4, "val": 2}, size=16)
    r = cli("train", root, "-o", tmp / "run", *TRAIN, "--max-steps", "1")
    assert r.exit_code == 0 and (tmp / "run" / "checkpoints" / "latest.pt").is_file(), r.output
    return root, tmp / "run"


TRAIN = ("--preset", "tiny", "--epochs", "1,0", "--batch-size", "2", "--perceptual-weight", "0", "--workers", "0")


@pytest.mark.parametrize("failure,reason", [
    (lambda: _raise_chained(RuntimeError("basic_ios::clear: iostream error"), RuntimeError(TORCH_POS)),
     "no space left on device or disk quota exceeded"),
    (lambda: _raise_chained(RuntimeError("x"), RuntimeError(CPU_ALLOC)), "out of memory"),
], ids=["unexpected-pos", "cpu-allocator"])
def test_a_checkpoint_save_that_the_machine_stops_is_one_line_and_keeps_the_last(tiny_cli_run, tmp_path, monkeypatch,
                                                                                   failure, reason):
    import shutil

    import torch

    root, run = tiny_cli_run
    shutil.copytree(run, tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    kept = latest.read_bytes()

    def full(obj, f, *a, **kw):  # a part of the file written, then the failure
        Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)
        failure()

    monkeypatch.setattr(torch, "save", full)
    r = cli("train", root, "-o", tmp_path / "run", *TRAIN)
    assert r.exit_code == 1, r.output
    assert f"{latest}: cannot save the checkpoint ({reason}); the previous one is kept" in r.output, r.output
    assert "Traceback" not in r.output and "enforce fail" not in r.output
    assert latest.read_bytes() == kept
    assert not list(latest.parent.glob(".*partial"))


def _fail_shard_write(monkeypatch, error: BaseException, fail_at: int) -> list[str]:
    """Make h5py's writes into the ``fail_at``-th shard file raise ``error``; returns the files it was
    asked to write into, in order."""
    seen: list[str] = []

    def create_dataset(self, name, *args, **kwargs):
        if self.file.filename not in seen:
            seen.append(self.file.filename)
        if len(seen) == fail_at:
            raise error
        return H5_CREATE(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    return seen


H5_CREATE = h5py.Group.create_dataset


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, H5_WRITE), RuntimeError(H5_CLOSE)],
                         ids=["h5-write", "h5-close"])
def test_a_full_disk_stops_the_shards_stage_in_one_line_and_a_rerun_completes(labelled, tmp_path, monkeypatch, error):
    out = tmp_path / "shards"
    args = ("shards", labelled / "patches", labelled / "saliency", "-o", out, "--shard-size", "4", "--jobs", "1")
    seen = _fail_shard_write(monkeypatch, error, fail_at=3)
    r = cli(*args)
    assert r.exit_code == 1, r.output
    line = (f"{out / 'train-00002.h5'}: cannot write the training shard (no space left on device); shards stopped, 2 "
            "finished items kept: a rerun resumes")
    assert line in r.output, r.output
    assert "Traceback" not in r.output and "failed:" not in r.output and "Errno" not in r.output
    assert len(seen) == 3  # the machine, not the item: no other shard was tried
    written = _files(out)
    assert sorted(k for k in written if k.endswith(".h5")) == ["train-00000.h5", "train-00001.h5"]
    assert not (out / "index.json").exists() and not list(out.glob(".*partial"))

    monkeypatch.setattr(h5py.Group, "create_dataset", H5_CREATE)  # space freed
    r = cli(*args)
    assert r.exit_code == 0 and "2 cached" in r.output, r.output
    for name in ("train-00000.h5", "train-00001.h5"):
        assert (out / name).read_bytes() == written[name]
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["count"] > 8 and index["splits"]["val"]["count"] > 0


# A real failed write, not a stand-in: HDF5 then still holds data and metadata to flush, and its close, each h5py
# object's as Python frees it ("Exception ignored in ObjectID.__dealloc__") and its flush at exit (a segmentation
# fault) failed again. A file size limit makes every write past it fail (EFBIG), as a full disk does, without root.
H5_LIMITED = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from raw2rgb.pipeline import shards
out, limit = Path(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
maps = np.random.default_rng(0).integers(0, 255, (60, 96, 128), dtype=np.uint8)
raw = np.zeros((60, 4, 48, 64), np.uint16)
for write in (lambda: shards.write_saliency_shard(out / "s.h5", [f"a{i}" for i in range(60)], maps, "m", ""),
              lambda: shards.write_shard(out / "t.h5", [f"a/{i}" for i in range(60)], raw, maps[:, None].repeat(3, 1),
                                         maps[:, None], {"format": 2})):
    try:
        write()
        print("written")
    except Exception as e:
        print("refused", type(e).__name__)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file size limit (RLIMIT_FSIZE)")
@pytest.mark.parametrize("limit", [4096, 200_000, 700_000])  # in the first write, in the data, in the last flush
def test_a_failed_hdf5_write_closes_its_file_quietly_and_leaves_nothing(tmp_path, limit):
    r = subprocess.run([sys.executable, "-c", H5_LIMITED, str(tmp_path), str(limit)], capture_output=True,
                       text=True, cwd=REPO, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]  # no crash at exit
    assert r.stdout.count("refused") == 2, r.stdout
    assert r.stderr == "", r.stderr[-3000:]  # not one "Exception ignored"
    assert list(tmp_path.iterdir()) == []  # no partial file


def _tmpfs_possible() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _tmpfs_possible(), reason="mounts a small tmpfs: root on Linux only")
def test_a_really_full_disk_stops_the_shards_stage_in_one_line_and_a_rerun_after_freeing_space_completes(labelled,
                                                                                                         tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "shards"
        cmd = [sys.executable, "-m", "raw2rgb", "-q", "shards", str(labelled / "patches"), str(labelled / "saliency"),
               "-o", str(out), "--shard-size", "4", "--jobs", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
        assert r.returncode == 1, r.stderr[-3000:]
        assert r.stderr.count("\n") == 1 and "cannot write the training shard (no space left on device); shards " \
            "stopped" in r.stderr, r.stderr[-3000:]
        assert not list(out.glob(".*partial"))
        subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
        assert r.returncode == 0 and json.loads((out / "index.json").read_text())["splits"]["train"], r.stderr[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- 24. round 3, cause 6: one shard check for every reader --------------------------------------------------------

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
        _damage(path, damage)
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


# -- 25. round 3, cause 7: numbers that pass a range check but cannot run ------------------------------------------

@pytest.mark.parametrize("fields,reason", [
    ({"lr_stage1": 10**400}, "TrainConfig.lr_stage1: 100000000000… (401 digits) is not a representable number "
                             "(accepted: lr_stage1 > 0)"),
    ({"seed": 2**64}, "TrainConfig.seed: 18446744073709551616 is not a representable number (accepted: seed >= 0)"),
    ({"generator": {"detail_filter": 101}}, "TrainConfig.generator.detail_filter: 101 is out of range (accepted: "
                                            "0 <= detail_filter <= 15, 0 or odd)"),
    ({"generator": {"detail_filter": 1001}}, "TrainConfig.generator.detail_filter: 1001 is out of range"),
    ({"generator": {"base": 100000}}, "TrainConfig.generator.base: 100000 is out of range (accepted: 1 <= base "
                                      "<= 256)"),
    ({"generator": {"saliency_width": 4096}}, "TrainConfig.generator.saliency_width: 4096 is out of range"),
    ({"discriminator": {"base": 100000}}, "TrainConfig.discriminator.base: 100000 is out of range (accepted: "
                                          "1 <= base <= 256)"),
])
def test_numbers_that_cannot_run_are_refused_from_a_file_with_or_without_dry_run(shards, tmp_path, fields, reason):
    (tmp_path / "c.json").write_text(json.dumps(fields))
    for dry in ((), ("--dry-run",)):
        line = _one_line(cli("train", shards["a"], "-o", tmp_path / "run", *TINY, "--config", tmp_path / "c.json",
                             *dry))
        assert f"c.json: {reason}" in line, line
    assert not (tmp_path / "run").exists()


def test_a_seed_beyond_64_bits_is_refused_as_an_option(shards, tmp_path):
    for dry in ((), ("--dry-run",)):
        line = _one_line(cli("train", shards["a"], "-o", tmp_path / "run", *TINY, "--seed", str(10**30), *dry))
        assert line == "Error: TrainConfig.seed: 100000000000… (31 digits) is not a representable number " \
                       "(accepted: seed >= 0)", line
    with pytest.raises(FieldError, match="lr_g: 100000000000… \\(401 digits\\) is not a representable number"):
        TrainConfig(lr_g=10**400)  # built in code, not only from JSON


def test_the_bounds_admit_every_preset_and_their_largest_values():
    for _, preset in PRESETS.items():
        GeneratorConfig.from_json(preset.generator.to_json())
    assert GeneratorConfig(base=256, saliency_width=256, res_blocks=64, detail_filter=15).detail_filter == 15
    assert DiscriminatorConfig(base=256).base == 256
    with pytest.raises(FieldError, match="detail_filter: 17 is out of range"):
        GeneratorConfig(detail_filter=17)


def test_synth_sizes_are_bounded_and_the_bound_is_in_the_help(tmp_path):
    r = cli("synth", "-o", tmp_path / "big", "--size", "100000", "100000")
    assert r.exit_code == 2 and "'--size': 100000 is not in the range 64<=x<=8192" in r.output, r.output
    assert not (tmp_path / "big").exists()
    assert "64 <= each <= 8192" in " ".join(cli("synth", "--help").output.split())
    with pytest.raises(InputError, match="100000×100000 pixels: at most 8192 per side"):
        synth.sample_dngs(tmp_path / "lib", size=(100000, 100000))
    assert not (tmp_path / "lib").exists()


# -- 26. round 3, cause 8: a report on any val size ----------------------------------------------------------------

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
    with Image.open(out.with_suffix(".png")) as sheet:  # closed: left to the collector, its ResourceWarning came
        height = sheet.size[1]  # in a later case's caught warnings
    assert height == count * 160 + (count - 1) * 40  # 16² tiles shown 10× larger, 4-px gaps
    images = re.findall(r"<td>(\d+)</td></tr>", page)
    assert images == [str(count)] * 3  # classical pipeline, fitted profile, model: each on every val sample


def test_a_report_on_the_train_split_never_calls_it_held_out(val0, tmp_path):
    out = tmp_path / "report.html"
    r = cli("report", val0["run"], "--dataset", val0["shards"], "--split", "train", "-o", out)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Held-out" not in page
    assert "<h2>Training samples (train split, not held out)</h2><p>4 of the split's 4 samples" in page


# -- 27. round 3, cause 9: a lock that is not a file ---------------------------------------------------------------

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


# -- 28. round 3, cause 10: Ctrl-C and SIGTERM stop every stage, and are never an item's failure -------------------

PREPARE = ("--patch-size", "32", "--min-inliers", "8", "--split", "0.67,0.33,0", "--saliency-method",
           "spectral-residual", "--jobs", "1")


class _SwallowsInterrupts:
    """Gets Ctrl-C while Python finalises it: the KeyboardInterrupt is printed ("Exception ignored in …") and
    dropped, as in the issue's runs where every stage then finished with exit 0."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def _interrupted(form: str):
    """Ctrl-C in one of the forms an item stage meets it."""
    if form == "raised":  # in the stage's own code
        raise KeyboardInterrupt
    if form == "converted":  # inside a library that answers with its own error (a DataLoader whose workers died)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly") from None
    if form == "swallowed":
        holder = _SwallowsInterrupts()
        del holder


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed form's, on purpose
@pytest.mark.parametrize("form", ["raised", "converted", "swallowed"])
def test_ctrl_c_in_an_item_stops_prepare_with_130_and_a_rerun_resumes(pairs_src, tmp_path, monkeypatch, form):
    from raw2rgb import prepare

    calls = []

    def work(item, ctx):
        calls.append(item.key)
        if len(calls) == 2:
            _interrupted(form)
        return real(item, ctx)

    real = prepare.PATCHES.work
    monkeypatch.setattr(prepare, "PATCHES", dataclasses.replace(prepare.PATCHES, work=work))
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", *PREPARE)
    assert r.exit_code == 130, r.output
    assert "patches: interrupted (SIGINT), " in r.output and "a rerun resumes" in r.output, r.output
    assert "failed" not in r.output and "Traceback" not in r.output
    assert {p.name for p in (tmp_path / "ds").iterdir()} >= {"unpack", "patches"}
    assert not (tmp_path / "ds" / "saliency").exists() and not (tmp_path / "ds" / "shards").exists()
    assert not (tmp_path / "ds" / "patches" / "manifest.json").exists()  # the journal holds what finished

    monkeypatch.undo()
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", *PREPARE)
    assert r.exit_code == 0, r.output
    # swallowed too: the signal, noted in the finaliser and raised as soon as it returned, stopped the item itself
    assert "patches: 2 done, 1 cached, 0 failed" in r.output, r.output
    assert json.loads((tmp_path / "ds" / "shards" / "index.json").read_text())["splits"]


# prepare with a saliency method that takes its time in the DataLoader's workers (forked: they see it), so that
# the signal reaches a stage at work, as the Ctrl-C did
SLOW_PREPARE = """
import os, sys, time
from pathlib import Path
from raw2rgb.salgan import methods
from raw2rgb.salgan.classical import spectral_residual

def slow(rgb):
    Path(os.environ["MARKS"], str(os.getpid())).touch()
    time.sleep(float(os.environ["DELAY"]))
    return spectral_residual(rgb)

methods.SALIENCY_METHODS.add("slow", methods.SaliencyMethod("a slow one", on_image=slow))
from raw2rgb.cli import main
main(sys.argv[1:], prog_name="raw2rgb")
"""


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_saliency_stops_prepare_before_the_shards(pairs_src, tmp_path, sig, code):
    marks = tmp_path / "marks"
    marks.mkdir()
    ds = tmp_path / "ds"
    cmd = [sys.executable, "-c", SLOW_PREPARE, "-q", "prepare", str(pairs_src), "-o", str(ds), *PREPARE]
    cmd[cmd.index("spectral-residual")] = "slow"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**ENV, "MARKS": str(marks), "DELAY": "2"}, start_new_session=True)
    try:
        _wait_for(lambda: (ds / "saliency").is_dir() and any(marks.iterdir()) or proc.poll() is not None)
        os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C reaches the loader's workers too
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err[-3000:]
    assert f"saliency: interrupted ({signal.Signals(sig).name})" in err, err[-3000:]
    assert "Traceback" not in err and "failed" not in err, err[-3000:]
    assert not (ds / "shards").exists() and not (ds / "saliency" / "manifest.json").exists()
    if sig == signal.SIGINT:  # a rerun completes
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**ENV, "MARKS": str(marks), "DELAY": "0"})
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((ds / "shards" / "index.json").read_text())["splits"]


class _Built:
    """Gets the signal while it is being built, as a DataLoader's iterator did as it forked its workers (raised
    there, the half-built iterator then failed in its own finaliser: "'…' object has no attribute '_shutdown'")."""

    def __init__(self, sig: int):
        os.kill(os.getpid(), sig)
        time.sleep(0.3)  # the stage's wake-ups arrive here too
        self.whole = True


class _Freed:
    def __init__(self, sig: int):
        self.sig = sig

    def __del__(self):
        os.kill(os.getpid(), self.sig)
        time.sleep(0.3)


# logging's at-fork hook, where the issue's Ctrl-C was printed and lost ("Exception ignored in: <function
# _releaseLock …>"): a function of the logging module, as the signal sees it
_AT_FORK = {"__name__": "logging", "os": os, "time": time}
exec("def _releaseLock(sig):\n    os.kill(os.getpid(), sig)\n    time.sleep(0.3)\n", _AT_FORK)


def _signal_in(spot: str, sig: int, done: list) -> None:
    if spot == "constructor":
        done.append(_Built(sig).whole)
    elif spot == "finaliser":
        freed = _Freed(sig)
        del freed
        done.append(True)
    elif spot == "at-fork hook":
        _AT_FORK["_releaseLock"](sig)
        done.append(True)


def _marking_item(item, ctx):
    Path(item.payload["marks"], item.key).touch()
    if item.key == "i1":
        _signal_in(item.payload["spot"], item.payload["sig"], item.payload["done"])
        time.sleep(0.5)  # the item's own code: the stop is raised here, at the next wake-up
    with atomic_path(ctx.out_dir / f"{item.key}.txt") as tmp:
        tmp.write_text(item.key)
    return [f"{item.key}.txt"], {}


MARKING = Stage("marking", 1, _marking_item)


@pytest.fixture
def terminal_signals():
    """Signal handlers as a terminal's process has them (Ctrl-C raises KeyboardInterrupt, SIGTERM kills):
    CI may start the suite as a background job, where SIGINT is inherited ignored."""
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, old[0])
    signal.signal(signal.SIGTERM, old[1])


@pytest.mark.usefixtures("terminal_signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("spot", ["stage start", "constructor", "finaliser", "at-fork hook"])
def test_a_signal_where_raising_is_unsafe_is_raised_after_and_no_item_starts_after_it(tmp_path, monkeypatch, spot,
                                                                                      sig):
    marks, done, unraisable = tmp_path / "marks", [], []
    marks.mkdir()
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    items = [stage_module.Item(f"i{k}", (), {"marks": str(marks), "spot": spot, "sig": sig, "done": done})
             for k in range(4)]

    def on_plan(todo):  # the saliency stage starts its DataLoader here (a constructor: its iterator's)
        if spot == "stage start":
            done.append(_Built(sig).whole)

    with pytest.raises(KeyboardInterrupt) as raised:
        stage_module.run_stage(MARKING, items, tmp_path / "out", {}, on_plan=on_plan)
    assert isinstance(raised.value, errors.Interrupted) and raised.value.signal == sig
    assert str(raised.value).startswith(f"marking: interrupted ({signal.Signals(sig).name}), ")
    assert done == [True]  # the unsafe place was left whole, and the stop came right after it
    started = sorted(p.name for p in marks.iterdir())
    assert started == ([] if spot == "stage start" else ["i0", "i1"])  # no item started after the signal
    assert not (tmp_path / "out" / "i1.txt").exists()
    assert unraisable == []  # no "Exception ignored in …"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.usefixtures("terminal_signals")
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_first_stage_is_130_or_143_and_one_line_not_aborted(pairs_src, tmp_path, monkeypatch,
                                                                                sig, code):
    from raw2rgb import cli as cli_module

    real = cli_module.LazyChoice.choices

    def importing(self):  # the options are parsed while the library is imported: seconds, before any stage
        assert signal.getsignal(sig) is not signal.SIG_DFL, "the signal would kill the process silently"
        os.kill(os.getpid(), sig)
        time.sleep(5)
        return real.fget(self)

    monkeypatch.setattr(cli_module.LazyChoice, "choices", property(importing, real.fset))
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", *PREPARE)
    assert r.exit_code == code and r.output == f"interrupted ({signal.Signals(sig).name})\n", r.output
    assert not (tmp_path / "ds").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


# -- 29. round 3, cause 11: a refused start leaves nothing behind, and never sticks --------------------------------

def test_a_start_refused_for_its_batch_size_leaves_nothing_and_the_corrected_one_runs(shards, tmp_path):
    rb = tmp_path / "rb"
    line = _one_line(cli("train", shards["a"], "-o", rb, *TINY, "--batch-size", "1000"))
    assert line == f"Error: {shards['a']}: 4 training samples make no batch of 1000 × 1 process(es); lower " \
                   "--batch-size", line
    assert not rb.exists()
    r = cli("train", shards["a"], "-o", rb, *TINY, "--batch-size", "2", "--max-steps", "1")
    assert r.exit_code == 0 and "reached --max-steps 1" in r.output, r.output


def test_a_start_refused_while_setting_up_removes_what_it_wrote(shards, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise TrainError("refused while setting up")

    monkeypatch.setattr(prior_fit, "fit_for_run", refuse)  # after config.json and log.txt were written
    with pytest.raises(TrainError, match="refused while setting up"):
        train(shards["a"], tmp_path / "new", tiny_config(), Runtime(workers=0))
    assert not (tmp_path / "new").exists()
    (tmp_path / "given").mkdir()  # a folder the user made stays, empty
    with pytest.raises(TrainError, match="refused while setting up"):
        train(shards["a"], tmp_path / "given", tiny_config(), Runtime(workers=0))
    assert [p.name for p in (tmp_path / "given").iterdir() if p.name != ".raw2rgb.lock"] == []


def test_a_run_without_a_checkpoint_starts_over_with_other_options_without_force(shards, tmp_path):
    rb = tmp_path / "rb"
    old = {"format": 1, "config": tiny_config(batch_size=1000).to_json(), "dataset": str(shards["a"]),
           "dataset_key": "left by a start that took no step"}
    run.open_run(rb, old, force=False)
    (rb / run.LOG).write_text("the old start's log\n")
    r = cli("train", shards["a"], "-o", rb, *TINY, "--max-steps", "1")
    assert r.exit_code == 0 and "reached --max-steps 1" in r.output, r.output
    assert run.read_identity(rb)["config"]["batch_size"] == 4
    assert "the old start's log" not in (rb / run.LOG).read_text()
    # with a checkpoint the run has steps to lose: another config is refused without --force
    line = _one_line(cli("train", shards["a"], "-o", rb, *TINY, "--seed", "3"))
    assert "holds a run with another config (differs in seed); use --force" in line, line


# -- 30. round 3, cause 12: no pool worker outlives its parent -----------------------------------------------------

def _slow_item(item, ctx):
    """A stage item that takes its time: notes its start (and its process) in ``marks``, then writes one file."""
    Path(item.payload["marks"], f"{item.key}-{os.getpid()}").touch()
    time.sleep(item.payload["seconds"])
    with atomic_path(ctx.out_dir / f"{item.key}.txt") as tmp:
        tmp.write_text(item.key)
    return [f"{item.key}.txt"], {}


SLOW = Stage("slow", 1, _slow_item)
SLOW_STAGE = """
import sys
from raw2rgb.pipeline.stage import Item, run_stage
from tests.test_faults import SLOW
out, marks = sys.argv[1:]
try:
    run_stage(SLOW, [Item(f"i{k}", (), {"marks": marks, "seconds": 30}) for k in range(8)], out, {}, jobs=2)
except KeyboardInterrupt as e:
    sys.exit(128 + e.signal)
"""


def _alive(pid: int) -> bool:
    try:  # a zombie waits for a parent to reap it: it runs nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_pool_worker_outlives_a_killed_or_stopped_stage(tmp_path, sig):
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    with open(tmp_path / "stderr", "w") as err:  # a file, not a pipe: a surviving worker would hold a pipe open
        proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(out), str(marks)], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err)
    workers: set[int] = set()
    try:
        _wait_for(lambda: len(list(marks.iterdir())) >= 2 or proc.poll() is not None)
        started = {p.name for p in marks.iterdir()}
        workers = {int(name.rsplit("-", 1)[1]) for name in started}
        assert len(workers) == 2 and all(_alive(pid) for pid in workers), (started, proc.poll())
        os.kill(proc.pid, sig)  # the parent alone: its workers must not go on without it
        proc.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143, (tmp_path / "stderr").read_text()[-3000:]
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "a worker outlived its parent"
        time.sleep(1)
        assert {p.name for p in marks.iterdir()} == started  # no queued item started after the parent went
        assert not list(out.glob("*.txt"))
    finally:
        for pid in workers:  # what a failed test left behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``: pid -> command line."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_parent_killed_while_its_pool_starts_leaves_no_process_behind(tmp_path):
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(out), str(marks)], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err)
    children: dict[int, str] = {}
    try:  # killed as soon as its two workers exist: still starting (importing), before their first item
        _wait_for(lambda: sum("loky" in c and "resource_tracker" not in c for c in _children(proc.pid).values()) >= 2
                  or proc.poll() is not None, timeout=60)
        children = _children(proc.pid)
        proc.kill()
        proc.wait(timeout=60)
        assert not list(marks.iterdir()), "the kill came after the first item: not the start of the pool"
        deadline = time.monotonic() + 5  # workers, loky's and multiprocessing's resource trackers
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [c for pid, c in children.items() if _alive(pid)], "outlived the parent"
        assert not list(marks.iterdir()) and not list(out.glob("*.txt"))
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def _loader_worker(parent: int) -> None:
    stage_module.quit_on_stop_signals(0, parent=parent)
    time.sleep(30)  # waiting for work, as a DataLoader worker does


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks")
def test_a_loader_worker_forked_as_its_parent_died_ends_at_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    gone = ctx.Process(target=_loader_worker, args=(os.getpid() + 10**6,))  # its parent is not the stage's
    gone.start()
    gone.join(5)
    assert gone.exitcode is not None, "a worker whose stage is gone waited for work"
    alive = ctx.Process(target=_loader_worker, args=(os.getpid(),))
    alive.start()
    alive.join(1)
    assert alive.exitcode is None  # its parent is there: it works on
    alive.terminate()  # the stage's shutdown: SIGTERM ends it at once, with status 0 (no "killed by signal")
    alive.join(5)
    assert alive.exitcode == 0


# -- 31. round 3, cause 13: --dry-run runs the run's checks; the device is checked before any stage ----------------

@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("r3src") / "src"
    synth.paired_dngs(d, size=(128, 128), scenes=synth.SCENES[:1])
    return d


@pytest.mark.parametrize("args,reason", [
    (("--patch-size", "12"), "shard patches of 12 packed pixels: the generator needs a multiple of 8 (choose "
                             "--patch-size or --crop accordingly, e.g. --crop 8)"),
    (("--patch-size", "32", "--crop", "12"), "shard patches of 12 packed pixels: the generator needs a multiple "
                                             "of 8"),
    (("--patch-size", "32", "--device", "bogus"), "unknown device 'bogus' (use auto, cpu, cuda or cuda:N)"),
])
def test_prepare_dry_run_refuses_what_the_run_refuses_before_any_stage(tiny_src, tmp_path, args, reason):
    lines = set()
    for dry in (("--dry-run",), ()):
        lines.add(_one_line(cli("prepare", tiny_src, "-o", tmp_path / "ds", *args, *dry)))
        assert not (tmp_path / "ds").exists()  # no stage ran, nothing written
    assert len(lines) == 1 and reason in lines.pop()


@pytest.mark.parametrize("args,reason", [
    (("--crop", "12"), "patches of 12 packed pixels; the generator needs a multiple of 8 no larger than the "
                       "shards' 16 (use --crop)"),
    (("--crop", "24"), "patches of 24 packed pixels"),
    (("--batch-size", "1000"), "4 training samples make no batch of 1000 × 1 process(es)"),
    (("--device", "bogus"), "unknown device 'bogus'"),
])
def test_train_dry_run_refuses_what_the_run_refuses(shards, tmp_path, args, reason):
    lines = set()
    for dry in (("--dry-run",), ()):
        lines.add(_one_line(cli("train", shards["a"], "-o", tmp_path / "run", *TINY, *args, *dry)))
        assert not (tmp_path / "run").exists()
    assert len(lines) == 1 and reason in lines.pop()


# -- 32. round 3, cause 14: --replace-source removes the old source's data -----------------------------------------

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


# -- 33. round 3, cause 15: a pixel limit, checked from the header -------------------------------------------------

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


# == round 3, the re-probe ==========================================================================================
# -- 34. what the round's own re-probe found: names too long, a user's manifest, deep JSON, escapes, copies, bytes --

def test_a_scene_name_too_long_for_the_file_system_is_refused_at_its_csv_line(tmp_path):
    src = _pairs_source(tmp_path)
    csv = tmp_path / "pairs.csv"
    names = sorted(p.stem for p in (src / "raw").glob("*.dng"))
    csv.write_text("raw,rgb,scene\n" + f"raw/{names[0]}.dng,rgb/{names[0]}.jpg,{'x' * 300}\n"
                   + f"raw/{names[1]}.dng,rgb/{names[1]}.jpg,ok\n")
    r = cli("prepare", src, "-o", tmp_path / "ds", "--layout", "pairs", "--pairs-csv", csv, "--patch-size", "32",
            "--min-inliers", "8", "--saliency-method", "spectral-residual", "--until", "unpack")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{csv}: line 2: scene part 'xxxxxxxxxxxxxxxxxxxx'… is 300 bytes long, over 200; refused" in r.output
    assert "File name too long" not in r.output and (tmp_path / "ds" / "unpack" / "ok.png").is_file()


@pytest.mark.parametrize("command", ["convert", "unpack"])
def test_a_users_own_manifest_in_the_output_is_refused_not_replaced(shoot, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    mine = b'{"my": "own manifest", "items": 3}\n'
    (out / "manifest.json").write_bytes(mine)
    r = cli(command, next(shoot.glob("*.dng")), "-o", out)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{out / 'manifest.json'}: not a manifest raw2rgb wrote (TypeError); refused" in r.output
    assert (out / "manifest.json").read_bytes() == mine and [p.name for p in out.iterdir()] == ["manifest.json"]


def test_json_nested_too_deep_is_one_line_wherever_it_is_read(small_shards, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    r = cli("evaluate", small_shards, "--profile", deep, "-o", tmp_path / "ev")
    assert r.exit_code == 1 and "Traceback" not in r.output and "deep.json: not a readable profile (RecursionError)" \
        in r.output
    r = cli("train", small_shards, "-o", tmp_path / "run", "--config", deep, "--dry-run")
    assert r.exit_code == 1 and "Traceback" not in r.output and "deep.json: not a readable JSON file" in r.output


def test_a_terminal_escape_in_a_file_name_is_shown_never_sent(tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "\x1b]0;PWNED\x07x.dng").write_bytes(b"not a raw file")
    r = cli("convert", bad, "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert "\x1b" not in r.output and "\x07" not in r.output and "\\x1b]0;PWNED\\x07x.dng" in r.output
    assert errors.one_line("a\x1b[31mb\tc\nd") == "a\\x1b[31mb c d"


def test_copies_are_bounded_before_any_work(pairs_src, tmp_path):
    r = cli("prepare", pairs_src, "-o", tmp_path / "ds", "--copies", "100000")
    assert r.exit_code == 2 and "100000 is not in the range 1<=x<=64" in r.output and not (tmp_path / "ds").exists()
    with pytest.raises(Exception, match="copies: 100 is out of range"):
        from raw2rgb import prepare as prep
        prep.PrepareConfig(src=str(pairs_src), out=str(tmp_path / "ds"), layout="pairs", copies=100)


def test_the_same_raw_converts_to_the_same_bytes_in_another_process(shoot, tmp_path):
    dng = next(shoot.glob("*.dng"))
    for fmt in ("png", "jpg"):
        outs = []
        for k in range(2):  # two processes: the ICC profile carries no creation time
            subprocess.run([sys.executable, "-m", "raw2rgb", "-q", "convert", str(dng), "-o",
                            str(tmp_path / f"{fmt}{k}"), "--format", fmt], check=True, cwd=REPO, env=ENV)
            outs.append(next((tmp_path / f"{fmt}{k}").glob(f"*.{fmt}")).read_bytes())
        assert outs[0] == outs[1]


def test_a_users_own_config_json_is_no_run_and_is_never_replaced(small_shards, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"mine": 1}\n')
    r = cli("train", small_shards, "-o", run_dir, "--preset", "tiny", "--perceptual-weight", "0", "--epochs", "1,0")
    assert r.exit_code == 1 and "is not empty and holds no run (config.json)" in r.output
    assert (run_dir / "config.json").read_text() == '{"mine": 1}\n' and sorted(p.name for p in run_dir.iterdir()) \
        in (["config.json"], [".raw2rgb.lock", "config.json"])


# -- 35. files named in options the configs declare: a missing one is one line, before any work ---------------------

def test_a_missing_file_named_in_an_option_is_one_line_before_any_work(pairs_src, small_shards, tmp_path):
    for dry in (("--dry-run",), ()):
        r = cli("prepare", pairs_src, "-o", tmp_path / "ds", "--layout", "pairs", "--pairs-csv",
                tmp_path / "nope.csv", *dry)
        assert r.exit_code == 1 and "nope.csv: no such CSV file (--pairs-csv)" in r.output, r.output
        assert "Traceback" not in r.output and not (tmp_path / "ds").exists()
        r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--vgg-weights",
                tmp_path / "nope.pth", *dry)
        assert r.exit_code == 1 and "nope.pth: no such VGG16 weights file (--vgg-weights)" in r.output, r.output
        assert not (tmp_path / "run").exists()
