"""A user's real habits and a hostile user's files: moved folders, reruns, two runs at once, output
folders inside inputs, full disks, malformed shards and configs, interrupts, links out of a folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from raw2rgb.files import FolderLock, write_json
from raw2rgb.model import checkpoint, run
from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import synth
from tests.conftest import cli
from tests.model.conftest import make_shards, tiny_config

REPO = Path(__file__).resolve().parents[1]


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
    path = root / "train-00000.h5"
    with h5py.File(path, "r+") as f:
        raw, rgb = f["raw"][()], f["rgb"][()]
        if damage == "float raw":
            del f["raw"]
            f["raw"] = raw.astype(np.float32)
        elif damage == "3-channel raw":
            del f["raw"]
            f["raw"] = raw[:, :3]
        else:
            del f["rgb"]
            f["rgb"] = rgb[:, :, :8, :8]
    for args in (("inspect", root), ("train", root, "-o", tmp_path / "run", "--preset", "tiny")):
        r = cli(*args)
        assert r.exit_code == 1 and "train-00000.h5" in r.output and reason in r.output, r.output
        assert "Traceback" not in r.output


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
    assert r.exit_code == 1 and "TrainConfig.weights.perceptual: nan is not a finite number" in r.output, r.output
    r = cli("train", small_shards, "-o", tmp_path / "run", "--preset", "tiny", "--epochs", "0,0")
    assert r.exit_code == 1 and "would train nothing" in r.output, r.output
    assert not (tmp_path / "run").exists()


# -- 12. prepare's options: non-finite numbers never switch a filter off ------------------------------------

@pytest.mark.parametrize("args,reason", [
    (("--split", "nan,0.1,0"), "three non-negative ratios"),
    (("--split", "inf,0.1,0"), "three non-negative ratios"),
    (("--min-score", "nan"), "PatchParams.min_score: nan is not a finite number"),
    (("--max-shift", "nan"), "PatchParams.max_shift: nan is not a finite number"),
    (("--min-mean", "nan"), "PatchParams.min_mean: nan is not a finite number"),
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
    from raw2rgb.model import losses
    from raw2rgb.model.train import TrainError

    monkeypatch.setattr(losses, "l1", lambda a, b: (a - b).abs().mean() * float("nan"))
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
