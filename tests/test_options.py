"""One declaration per option, and a CLI that only parses, calls and prints: every command's options
are its config's fields (a field added to a config is an option, with its range in ``--help``), and
the library called with the CLI's defaults gives what the CLI run gives."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from raw2rgb.cli import main
from raw2rgb.config import checked, field_option
from raw2rgb.options import config_options, given
from raw2rgb.pipeline import synth
from tests.conftest import build_shards, cli

ROOT = Path(__file__).resolve().parents[1]

# command → its config classes (module, class, fields the command takes otherwise): every field is an
# option unless marked otherwise
CONFIGS = {
    ("unpack",): [("raw2rgb.pipeline.unpack", "UnpackConfig", ())],
    ("saliency",): [("raw2rgb.salgan.methods", "SaliencyConfig", ())],
    ("prepare",): [("raw2rgb.prepare", "PrepareConfig", ())],
    ("shards",): [("raw2rgb.pipeline.shards", "ShardsConfig", ())],
    ("train",): [("raw2rgb.model.recipe", "TrainConfig", ()), ("raw2rgb.model.recipe", "Runtime", ())],
    ("convert",): [("raw2rgb.convert", "ConvertConfig", ())],
    ("evaluate",): [("raw2rgb.render", "ScoreConfig", ())],
    ("report",): [("raw2rgb.render", "ScoreConfig", ("batch_size", "device"))],
    ("profile", "fit"): [("raw2rgb.pipeline.profile_fit", "FitConfig", ())],
    ("synth",): [("raw2rgb.pipeline.synth", "SynthConfig", ())],
}


def _command(path: tuple[str, ...]) -> click.Command:
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _fields(cls, prefix=()) -> set[str]:
    """Dotted paths of a config's fields that are options (nested configs flattened)."""
    import typing

    from raw2rgb.config import JsonConfig
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not field_option(f)["option"]:
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, JsonConfig):
            out |= _fields(hint, (*prefix, f.name))
        else:
            out.add(".".join((*prefix, f.name)))
    return out


@pytest.mark.parametrize("path", list(CONFIGS), ids=" ".join)
def test_every_config_field_is_an_option_of_its_command(path):
    import importlib
    cmd = _command(path)
    dests = {p.name.split("__", 1)[1].replace("__", ".") for p in cmd.params if "__" in (p.name or "")}
    wanted = set()
    for module, name, skip in CONFIGS[path]:
        wanted |= _fields(getattr(importlib.import_module(module), name)) - set(skip)
    assert dests == wanted


def _commands(group=main, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_declares_each_option_once():
    """Two configs of one command (or a nested config and its parent) naming one option would let
    click keep either silently: the command refuses to load."""
    for path, cmd in _commands():
        opts = [o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])]
        assert len(opts) == len(set(opts)), path
    from raw2rgb.cli import _Command, from_config
    twice = _Command("twice", more_params=from_config("cfg", "raw2rgb.render", "ScoreConfig"),
                     params=[click.Option(["--split"])])
    with pytest.raises(RuntimeError, match="twice: options declared twice: --split"):
        _ = twice.params


def test_a_field_becomes_an_option_with_its_default_range_and_help():
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        strength: float = checked(0.5, min=0, max=2, metavar="S", help="How strong.")
        passes: int | None = checked(None, min=1, help="Passes [default: as many as needed].")
        hidden: int = checked(3, option=False)
        fast: bool = checked(False, help="Go fast.")
        split: tuple[float, float] = checked((0.9, 0.1), min=0, metavar="A,B", help="Two ratios.")

    options = config_options(Knobs, "k")
    assert [o.opts[0] for o in options] == ["--strength", "--passes", "--fast", "--split"]

    @click.command()
    def show(**kw):
        click.echo(json.dumps(given(kw, "k")))
    show.params.extend(options)
    from click.testing import CliRunner
    text = " ".join(CliRunner().invoke(show, ["--help"], terminal_width=200).output.split())
    assert "--strength S How strong. [default: 0.5; 0<=x<=2]" in text
    assert "--passes N Passes [default: as many as needed]. [x>=1]" in text and "hidden" not in text
    out = CliRunner().invoke(show, ["--strength", "1.5", "--split", "0.8,0.2"])
    assert json.loads(out.output) == {"strength": 1.5, "split": [0.8, 0.2]}  # only what was given
    assert CliRunner().invoke(show, []).output.strip() == "{}"
    out = CliRunner().invoke(show, ["--strength", "3"])
    assert out.exit_code == 2 and "3.0 is not in the range 0<=x<=2" in out.output


def test_a_new_config_field_is_a_prepare_option_with_no_cli_change(tmp_path):
    """A field added to PrepareConfig (here by a subclass put in its place) shows in ``prepare --help``
    with its range, and a value given reaches the config the run uses."""
    synth.sample_dngs(tmp_path / "src", size=(64, 96))
    probe = f"""
import dataclasses, json
from click.testing import CliRunner
from raw2rgb import prepare
from raw2rgb.config import checked

@dataclasses.dataclass(frozen=True)
class Wider(prepare.PrepareConfig):
    overlap_px: int = checked(4, min=0, max=32, help="A new knob.")

prepare.PrepareConfig = Wider
from raw2rgb.cli import main
r = CliRunner().invoke(main, ["prepare", "--help"], terminal_width=200)
print(" ".join(r.output.split()))
r = CliRunner().invoke(main, ["prepare", {str(tmp_path / "src")!r}, "-o", {str(tmp_path / "ds")!r}, "--dry-run",
                              "--overlap-px", "9", "--saliency-method", "spectral-residual"])
print(r.output)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    help_text, plan = out.split("\n", 1)
    assert "--overlap-px N A new knob. [default: 4; 0<=x<=32]" in help_text
    assert json.loads(plan)["config"]["overlap_px"] == 9


# -- the library with the CLI's defaults gives what the CLI gives -----------------------------------------

def _tree(root: Path, skip=("manifest.json",)) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and ".journal" not in p.parts}


def test_synth_library_equals_cli(tmp_path):
    assert cli("synth", "-o", tmp_path / "cli", "--size", "64", "96").exit_code == 0
    synth.write(tmp_path / "lib", synth.SynthConfig(size=(64, 96)))
    assert _tree(tmp_path / "cli") == _tree(tmp_path / "lib") and len(_tree(tmp_path / "lib")) == 8


def test_unpack_library_equals_cli(tmp_path):
    from raw2rgb.pipeline import unpack
    synth.sample_dngs(tmp_path / "raw", size=(64, 96))
    assert cli("unpack", tmp_path / "raw", "-o", tmp_path / "cli", "-j", "1").exit_code == 0
    unpack.unpack_files([str(tmp_path / "raw")], tmp_path / "lib", unpack.UnpackConfig())
    cli_files, lib_files = _tree(tmp_path / "cli"), _tree(tmp_path / "lib")
    assert sorted(cli_files) == sorted(lib_files) and len([k for k in cli_files if k.endswith(".png")]) == 4
    assert all(cli_files[k] == lib_files[k] for k in cli_files if k.endswith(".png"))


def test_prepare_plan_equals_cli_dry_run(tmp_path):
    from raw2rgb import prepare
    synth.sample_dngs(tmp_path / "src", size=(64, 96))
    r = cli("prepare", tmp_path / "src", "-o", tmp_path / "ds", "--dry-run")
    assert r.exit_code == 0, r.output
    plan = prepare.plan(prepare.PrepareConfig(src=str(tmp_path / "src"), out=str(tmp_path / "ds")))
    assert json.loads(r.output) == plan.to_json()
    assert plan.config.layout == "raw+jpeg" and plan.config.patch.size == 64 and plan.config.patch.stride == 32


def test_shards_train_and_profile_library_equal_cli(labelled, tmp_path):
    from raw2rgb import config
    from raw2rgb.model import recipe
    from raw2rgb.pipeline import profile, profile_fit, shards
    index = build_shards(labelled, tmp_path / "cli")
    shards.build_from_stages(labelled / "patches", labelled / "saliency", tmp_path / "lib", cfg=shards.ShardsConfig())
    assert json.loads((tmp_path / "lib" / "index.json").read_text()) == index

    r = cli("train", tmp_path / "cli", "-o", tmp_path / "run", "--dry-run")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"config": recipe.train_config(dataset=tmp_path / "cli").to_json(),
                                    "runtime": config.layered(recipe.Runtime, [(None, {})]).to_json()}

    assert cli("profile", "fit", tmp_path / "cli", "-o", tmp_path / "cli.json").exit_code == 0
    profile.save(profile_fit.fit_on(tmp_path / "cli"), tmp_path / "lib.json")
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "lib.json").read_text())


def test_convert_library_equals_cli(tmp_path):
    from raw2rgb import convert
    synth.sample_dngs(tmp_path / "raw", size=(64, 96))
    r = cli("convert", tmp_path / "raw", "-o", tmp_path / "cli", "-j", "1")
    assert r.exit_code == 0, r.output
    cfg, result = convert.convert_files([str(tmp_path / "raw")], tmp_path / "lib")
    assert cfg.method == "isp" and not result.problems()
    cli_files, lib_files = _tree(tmp_path / "cli"), _tree(tmp_path / "lib")
    assert sorted(cli_files) == sorted(lib_files) and len([k for k in cli_files if k.endswith(".png")]) == 4
    assert all(cli_files[k] == lib_files[k] for k in cli_files if k.endswith(".png"))


def test_saliency_and_evaluate_library_equal_cli(labelled, tmp_path):
    from raw2rgb.model import evaluate
    from raw2rgb.pipeline import shards
    from raw2rgb.salgan import label, methods
    images = labelled / "patches" / "rgb"
    r = cli("saliency", images, "-o", tmp_path / "cli", "--method", "spectral-residual")
    assert r.exit_code == 0, r.output
    label.label_files([str(images)], tmp_path / "lib", methods.SaliencyConfig(method="spectral-residual"))
    maps = sorted(p.name for p in (tmp_path / "cli").glob("*.h5"))
    assert maps and maps == sorted(p.name for p in (tmp_path / "lib").glob("*.h5"))
    for name in maps:
        a, b = shards.read_saliency_shard(tmp_path / "cli" / name), shards.read_saliency_shard(tmp_path / "lib" / name)
        assert list(a.ids) == list(b.ids) and (a.maps[:] == b.maps[:]).all()

    build_shards(labelled, tmp_path / "ds")
    r = cli("evaluate", tmp_path / "ds")  # the default method with no input: the classical pipeline, on val
    assert r.exit_code == 0, r.output
    summary = evaluate.evaluate(tmp_path / "ds").summary
    assert json.loads(r.output) == json.loads(json.dumps(summary)) and summary["method"] == "isp"
