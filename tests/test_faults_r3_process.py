"""Faults, round 3 (issue 31), the process side: a full disk or out of memory during a write is one line and
loses nothing written (5); Ctrl-C and SIGTERM stop every stage, never as an item's failure (10); no pool
worker outlives a parent killed with SIGKILL (12)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from raw2rgb import errors
from raw2rgb.files import atomic_path
from raw2rgb.pipeline.stage import Stage
from tests.conftest import cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".raw2rgb.lock"}


def _raise_chained(inner: BaseException, outer: BaseException):
    """Raise ``outer`` while handling ``inner``, as torch's zip writer does when its close fails too."""
    try:
        raise inner
    except type(inner):
        raise outer  # noqa: B904 - the implicit chain is the point


# -- 5. a full disk or out of memory during a write ----------------------------------------------------------
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
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
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
def test_a_checkpoint_save_that_the_machine_stops_is_one_line_and_keeps_the_last(tiny_run, tmp_path, monkeypatch,
                                                                                   failure, reason):
    import shutil

    import torch

    root, run = tiny_run
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


# -- 10. Ctrl-C and SIGTERM stop every stage, and are never an item's failure ----------------------------------

@pytest.fixture(scope="module")
def pairs_src(tmp_path_factory) -> Path:
    from raw2rgb.pipeline import synth

    d = tmp_path_factory.mktemp("pairs") / "src"
    synth.paired_dngs(d, size=(192, 256), scenes=synth.SCENES[:3])
    return d


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
    finished = 2 if form == "swallowed" else 1  # swallowed: the item itself completed, then the stage stopped
    assert f"patches: {3 - finished} done, {finished} cached, 0 failed" in r.output, r.output
    assert json.loads((tmp_path / "ds" / "shards" / "index.json").read_text())["splits"]


# prepare with a saliency method that takes its time in the DataLoader's workers (forked: they see it), so that
# the signal reaches a stage at work, as the Ctrl-C did
SLOW_PREPARE = """
import os, sys, time
from pathlib import Path
from raw2rgb.salgan import label
from raw2rgb.salgan.classical import spectral_residual

def slow(rgb):
    Path(os.environ["MARKS"], str(os.getpid())).touch()
    time.sleep(float(os.environ["DELAY"]))
    return spectral_residual(rgb)

label.SALIENCY_METHODS.add("slow", label.SaliencyMethod("a slow one", on_image=slow))
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


# -- 12. no pool worker outlives its parent -----------------------------------------------------------------------

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
from tests.test_faults_r3_process import SLOW
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
