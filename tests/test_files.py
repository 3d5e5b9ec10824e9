"""files.py: atomic writes, collecting inputs, path safety, output-folder locks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raw2rgb import files
from raw2rgb.errors import FolderLocked, InputError

REPO = Path(__file__).resolve().parents[1]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_flushes_the_file_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    files.write_bytes(tmp_path / "x.bin", b"data")
    assert (tmp_path / "x.bin").read_bytes() == b"data"
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the name points at it


def test_collect_files_keys_by_relative_path_and_skips_the_output_folder(tmp_path):
    src = tmp_path / "shoot"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for p in (src / "a" / "x.dng", src / "b" / "x.dng", src / ".hidden.dng"):
        p.write_bytes(b"raw")
    (src / "out").mkdir()
    (src / "out" / "y.dng").write_bytes(b"an output")
    found = files.collect_files([str(src)], lambda p: p.suffix == ".dng", exclude=[src / "out"])
    assert [k for k, _ in found] == ["a/x", "b/x"]
    with pytest.raises(InputError, match="no input files"):
        files.collect_files([str(src / "out")], lambda p: True, exclude=[src / "out"])


def test_collect_files_does_not_follow_links_out_of_the_folder(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "secret"
    src.mkdir()
    outside.mkdir()
    (outside / "passwd.dng").write_bytes(b"not yours")
    (src / "own.dng").write_bytes(b"raw")
    (src / "link.dng").symlink_to(outside / "passwd.dng")
    (src / "dir").symlink_to(outside, target_is_directory=True)
    found = files.collect_files([str(src)], lambda p: True)
    assert [k for k, _ in found] == ["own"]
    assert files.inside(src, src / "own.dng") and not files.inside(src, src / "link.dng")


def test_same_key_twice_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.dng").write_bytes(b"1")
    (tmp_path / "b" / "x.dng").write_bytes(b"2")
    with pytest.raises(InputError, match="both be named 'x'"):
        files.collect_files([str(tmp_path / "a" / "x.dng"), str(tmp_path / "b" / "x.dng")], lambda p: True)


HOLD = textwrap.dedent("""
    import sys, time
    from raw2rgb.files import FolderLock
    with FolderLock(sys.argv[1], "raw2rgb test"):
        print("held", flush=True)
        time.sleep(30)
""")


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    folder = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=rf"out: in use by pid {proc.pid} \(raw2rgb test"):
            with files.FolderLock(folder):
                pass
    finally:
        proc.kill()  # SIGKILL: the kernel releases the lock
        proc.wait()
    with files.FolderLock(folder), files.FolderLock(folder):  # free again, and re-entrant in one process
        pass
