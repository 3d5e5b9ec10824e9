"""Faults round 3 (issue 31), causes 3, 7, 11 and 13: a run's checkpoint belongs to its run, numbers
bounded where memory depends on them, a refused start leaves nothing behind, --dry-run runs the
run's checks. (To be merged into tests/test_faults.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from raw2rgb.config import FieldError
from raw2rgb.errors import InputError
from raw2rgb.model import run
from raw2rgb.model import train as train_module
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig
from raw2rgb.model.recipe import TrainConfig, TrainError
from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import synth
from tests.conftest import cli
from tests.model.conftest import make_shards, tiny_config
from tests.test_faults import _files

TINY = ("--preset", "tiny", "--epochs", "2,0", "--batch-size", "4", "--perceptual-weight", "0")


def _one_line(r, exit_code: int = 1) -> str:
    assert r.exit_code == exit_code and r.output.count("\n") == 1 and "Traceback" not in r.output, r.output
    return r.output.strip()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("r3shards")
    return {"a": make_shards(tmp / "a", {"train": 4, "val": 2}, size=16),
            "b": make_shards(tmp / "b", {"train": 4, "val": 2}, size=16, seed=5)}


# -- 3. a run's checkpoint belongs to its run ----------------------------------------------------------------

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


# -- 7. numbers that pass a range check but cannot run --------------------------------------------------------

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
    assert "64 to 8192 per side" in cli("synth", "--help").output
    with pytest.raises(InputError, match="100000×100000 pixels: at most 8192 per side"):
        synth.sample_dngs(tmp_path / "lib", size=(100000, 100000))
    assert not (tmp_path / "lib").exists()


# -- 11. a refused start leaves nothing behind, and never sticks -----------------------------------------------

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

    monkeypatch.setattr(train_module, "_fit_prior", refuse)  # after config.json and log.txt were written
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


# -- 13. --dry-run runs the run's checks; the device is checked before any stage -------------------------------

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
