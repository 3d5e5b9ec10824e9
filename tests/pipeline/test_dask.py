"""Stages on a Dask cluster (joblib's dask backend): the same outputs as local processes (PNG and JSON
byte for byte, HDF5 by content), and a worker killed mid-stage loses no finished item."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.errors import InputError
from raw2rgb.files import write_bytes
from raw2rgb.pipeline import synth
from raw2rgb.pipeline.stage import Context, Item, Manifest, Stage, dask_cluster, run_stage

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package
    saved = dict(os.environ)  # the nannies set OMP_NUM_THREADS=1 & co. in this process's environment
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      worker_dashboard_address=None) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _tree(root: Path) -> dict[str, bytes]:
    """Every output's bytes — HDF5 files by content: HDF5 may place the same datasets at other
    offsets in another process (measured: a saliency shard's ids before or after its maps)."""
    return {str(p.relative_to(root)): _h5_content(p) if p.suffix == ".h5" else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _h5_content(path: Path) -> bytes:
    import hashlib

    import h5py

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for k in sorted(f):
            data = f[k][()]
            h.update(k.encode() + str(data.dtype).encode() + str(data.shape).encode())
            h.update(repr(data.tolist()).encode() if data.dtype == object else data.tobytes())
        for k in sorted(f.attrs):
            if k != "inputs_key":  # a hash of the upstream shards' bytes
                h.update(f"{k}={f.attrs[k]!r}".encode())
    return h.digest()


def _records(root: Path) -> dict:
    m = Manifest.load(root)
    return {k: (r.status, r.cache_key if root.name != "shards" else "", sorted(r.outputs), r.reason)
            for k, r in m.records.items()}


def test_unpack_and_prepare_on_dask_equal_the_local_run(cluster, tmp_path):
    src = tmp_path / "src"
    synth.paired_dngs(src, size=(192, 256), scenes=synth.SCENES[:4])
    (src / "broken.dng").write_bytes(b"II*\x00 not a raw")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    runner = CliRunner()
    local = runner.invoke(main, ["-q", "prepare", str(src), "-o", str(tmp_path / "local"), "--patch-size", "32",
                                 "--saliency-method", "spectral-residual", "--min-inliers", "8", "-j", "2",
                                 "--split", "0.5,0.5,0"])
    dask = runner.invoke(main, ["-q", "prepare", str(src), "-o", str(tmp_path / "dask"), "--patch-size", "32",
                                "--saliency-method", "spectral-residual", "--min-inliers", "8", "--split", "0.5,0.5,0",
                                "--backend", "dask", "--scheduler", cluster.scheduler_address])
    assert local.exit_code == dask.exit_code == 1  # the broken pair fails in both, alone
    assert "broken.dng" in dask.output and "Traceback" not in dask.output
    for stage in ("unpack", "patches", "saliency", "shards"):
        a, b = tmp_path / "local" / stage, tmp_path / "dask" / stage
        assert _tree(a) == _tree(b) and _tree(a), stage
        assert _records(a) == _records(b), stage
    again = runner.invoke(main, ["-q", "unpack", str(src), "-o", str(tmp_path / "dask" / "unpack"), "--backend", "dask",
                                 "--scheduler", cluster.scheduler_address])
    assert "0 done, 4 cached, 1 failed" in again.output  # cached like a local run


# A stage whose item "victim" kills its worker process once, after three other items finished.
def _slow_item(item: Item, ctx: Context) -> tuple[list[str], dict]:
    calls = ctx.out_dir.parent / "calls"
    calls.mkdir(exist_ok=True)
    with open(calls / item.key, "a") as f:
        f.write(f"{os.getpid()}\n")
    if item.key == "victim" and not (ctx.out_dir.parent / "killed").exists():
        deadline = time.monotonic() + 60
        while len(list((ctx.out_dir / ".journal").glob("*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        (ctx.out_dir.parent / "killed").write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-item
    time.sleep(0.2)
    write_bytes(ctx.out_dir / f"{item.key}.txt", item.key.encode())
    return [f"{item.key}.txt"], {}


SLOW = Stage("slow", 1, _slow_item)


def test_a_worker_killed_mid_stage_loses_no_finished_item(cluster, tmp_path):
    items = [Item("victim", ())] + [Item(f"i{k:02d}", ()) for k in range(8)]
    with dask_cluster(cluster.scheduler_address):
        result = run_stage(SLOW, items, tmp_path / "out", {})
    assert (tmp_path / "killed").exists()  # a worker did die
    assert result.done == 9 and not result.failed  # the victim was retried on a live worker
    calls = {p.name: len(p.read_text().split()) for p in (tmp_path / "calls").iterdir()}
    assert calls["victim"] == 2
    finished_before = [k for k, n in calls.items() if k != "victim"]
    assert all(calls[k] == 1 for k in finished_before), calls  # nothing finished was run again
    rerun = run_stage(SLOW, items, tmp_path / "out", {})
    assert rerun.cached == 9 and rerun.done == 0


def test_dask_without_a_scheduler_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(main, ["unpack", str(tmp_path), "-o", str(tmp_path / "o"), "--backend", "dask"])
    assert r.exit_code == 2 and "needs --scheduler" in r.output


def test_unreachable_scheduler_is_one_line():
    with pytest.raises(InputError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with dask_cluster("tcp://127.0.0.1:9", timeout="1s"):
            pass
