"""What each entry point imports, measured in a fresh interpreter (``-X importtime``): every ``--help``
imports no torch, and inference (converting a frame with a checkpoint, or importing its modules)
imports no training code and no training-data code. A failure names each module that should not
be there and the chain of imports that brought it in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from raw2rgb.cli import main

ROOT = Path(__file__).resolve().parents[1]

# what a trained model needs no part of: the loop, its state and losses, the shards and their loader,
# the prior's fitting on shards, the synthetic data
TRAINING = ("raw2rgb.model.train", "raw2rgb.model.state", "raw2rgb.model.losses", "raw2rgb.model.data",
            "raw2rgb.model.prior_fit", "raw2rgb.pipeline.shards", "raw2rgb.pipeline.synth")


def _commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the group lists, as the words that name it."""
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        out.append((*path, name))
        sub = group.get_command(ctx, name)
        if isinstance(sub, click.Group):
            out += _commands(sub, (*path, name))
    return out


def _imported(args: list[str], cwd: Path) -> list[tuple[int, str]]:
    """(depth, module) of every module a fresh interpreter imports running ``python -X importtime
    ARGS``, in the order their imports finish (a module's imports come before it, one level deeper)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd), "XDG_CACHE_HOME": str(cwd / "cache")}
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
                         cwd=cwd)
    assert out.returncode == 0, f"python {' '.join(args)} failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            field = line.rsplit("|", 1)[1]
            if field.strip() != "imported package":  # the header
                rows.append(((len(field) - len(field.lstrip()) - 1) // 2, field.strip()))
    return rows


def _offenders(rows: list[tuple[int, str]], unwanted: tuple[str, ...]) -> list[str]:
    """The unwanted modules imported (a name in ``unwanted`` or below it): for each way in (one not
    imported by another unwanted module), the chain that imported it, ``module ← importer ← … ←
    the first import``; then the others that are not sub-modules of those, by name."""
    def bad(name: str) -> bool:
        return any(name == u or name.startswith(u + ".") for u in unwanted)

    ways, others = [], []
    for i, (depth, name) in enumerate(rows):
        if not bad(name):
            continue
        chain = [name]
        for d, parent in rows[i + 1 :]:
            if d < depth:
                chain.append(parent)
                depth = d
        if any(bad(c) for c in chain[1:]):
            others.append(name)
        else:
            ways.append(" ← ".join(chain))
    roots = [w.split(" ")[0] for w in ways]
    also = sorted({o for o in others if not any(o.startswith(r + ".") for r in roots)})  # not torch's hundreds
    return ways + ([f"and through them: {', '.join(also)}"] if also else [])


def test_the_command_lists_are_found():
    commands = _commands()
    assert {("convert",), ("train",), ("prepare",)} <= set(commands)
    assert any(len(c) > 1 for c in commands)  # the sub-commands of a group


@pytest.mark.parametrize("command", [(), *_commands()], ids=lambda c: " ".join(c) or "raw2rgb")
def test_help_imports_no_torch(command, tmp_path):
    rows = _imported(["-m", "raw2rgb", *command, "--help"], tmp_path)
    assert "raw2rgb.cli" in {name for _, name in rows}
    bad = _offenders(rows, ("torch",))
    assert not bad, f"raw2rgb {' '.join(command)} --help imports torch:\n  " + "\n  ".join(bad)


@pytest.fixture(scope="module")
def frame_and_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A DNG of the virtual camera and a checkpoint of the tiny preset's generator (random weights)."""
    from raw2rgb.model import checkpoint
    from raw2rgb.model.discriminator import Discriminator
    from raw2rgb.model.generator import Generator, init_weights
    from raw2rgb.model.presets import PRESETS
    from raw2rgb.model.recipe import TrainConfig
    from raw2rgb.pipeline import synth

    tmp = tmp_path_factory.mktemp("inference")
    frame = synth.sample_dngs(tmp / "raws", size=(64, 96))[0]
    g, d = Generator(PRESETS["tiny"].generator), Discriminator(PRESETS["tiny"].discriminator)
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    checkpoint.save(tmp / "c.pt", {"G": g, "D": d}, TrainConfig.preset_config("tiny").to_json(), {})
    return frame, tmp / "c.pt"


def test_converting_a_frame_with_a_checkpoint_imports_no_training_code(frame_and_checkpoint, tmp_path):
    """The whole conversion, the overlap measurement on the probe frame included (no ``--overlap``)."""
    frame, ckpt = frame_and_checkpoint
    rows = _imported(["-m", "raw2rgb", "-q", "convert", str(frame), "-o", str(tmp_path / "out"),
                      "--checkpoint", str(ckpt), "--tile", "32"], tmp_path)
    assert (tmp_path / "out" / f"{frame.stem}.png").is_file()
    assert (tmp_path / "cache" / "raw2rgb" / "overlaps.json").is_file()  # the probe ran
    bad = _offenders(rows, TRAINING)
    assert not bad, "converting a frame imports training code:\n  " + "\n  ".join(bad)


def test_inference_modules_import_no_training_code(tmp_path):
    rows = _imported(["-c", "import raw2rgb.model.infer, raw2rgb.model.generator, raw2rgb.model.renderers, "
                            "raw2rgb.convert"], tmp_path)
    assert "raw2rgb.model.infer" in {name for _, name in rows}
    bad = _offenders(rows, TRAINING)
    assert not bad, "the inference modules import training code:\n  " + "\n  ".join(bad)
