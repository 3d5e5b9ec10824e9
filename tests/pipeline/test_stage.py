"""The stage machinery: caching, partial redo, failures, atomic writes, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raw2rgb.errors import UserError
from raw2rgb.pipeline import stage as st

CALLS: list[str] = []


def _copy_upper(item, ctx):
    """A toy stage: upper-cases its input (or fails on request)."""
    out_dir, params = ctx.out_dir, ctx.params
    CALLS.append(item.key)
    text = Path(item.inputs[0]).read_text()
    if "fail" in text:
        raise st.ItemError(f"{item.inputs[0]}: asked to fail")
    if "crash" in text:
        raise RuntimeError("boom\nsecond line")
    out = f"{item.key}.txt"
    st.write_bytes(out_dir / out, (text.upper() * params["times"]).encode())
    return [out], {"length": len(text)}


TOY = st.Stage("toy", 1, _copy_upper)


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in "abc":
        (src / f"{name}.in").write_text(name * 3)
    CALLS.clear()
    return src


def _items(src):
    return [st.Item(p.stem, (str(p),)) for p in sorted(src.glob("*.in"))]


def test_second_run_does_nothing_and_rewrites_nothing(inputs, tmp_path):
    out = tmp_path / "out"
    r1 = st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert (r1.done, r1.cached, len(r1.failed)) == (3, 0, 0)
    files = lambda: {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".raw2rgb.lock"}  # noqa: E731
    before = files()
    CALLS.clear()
    r2 = st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert (r2.done, r2.cached) == (0, 3) and CALLS == []
    assert files() == before
    assert (out / "a.txt").read_text() == "AAA"


def test_changed_param_redoes_all_changed_input_redoes_one(inputs, tmp_path):
    out = tmp_path / "out"
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    CALLS.clear()
    r = st.run_stage(TOY, _items(inputs), out, {"times": 2})
    assert r.done == 3 and sorted(CALLS) == ["a", "b", "c"]
    assert (out / "b.txt").read_text() == "BBBBBB"
    (inputs / "b.in").write_text("xyz")
    CALLS.clear()
    r = st.run_stage(TOY, _items(inputs), out, {"times": 2})
    assert (r.done, r.cached) == (1, 2) and CALLS == ["b"]


def test_touched_but_unchanged_input_stays_cached(inputs, tmp_path):
    out = tmp_path / "out"
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    (inputs / "a.in").write_text("aaa")  # same content, new mtime
    CALLS.clear()
    r = st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert r.cached == 3 and CALLS == []


def test_deleted_or_damaged_output_is_redone(inputs, tmp_path):
    out = tmp_path / "out"
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    (out / "a.txt").unlink()
    (out / "b.txt").write_text("B")  # wrong size
    CALLS.clear()
    r = st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert sorted(CALLS) == ["a", "b"] and r.cached == 1
    assert (out / "b.txt").read_text() == "BBB"


@pytest.mark.parametrize("jobs", [1, 2])
def test_failures_are_one_line_and_others_complete(inputs, tmp_path, jobs):
    (inputs / "d.in").write_text("fail")
    (inputs / "e.in").write_text("crash")
    items = _items(inputs) + [st.Item("gone", (str(inputs / "gone.in"),))]
    out = tmp_path / "out"
    r = st.run_stage(TOY, items, out, {"times": 1}, jobs=jobs)
    assert r.done == 3
    reasons = {rec.key: rec.reason for rec in r.failed}
    assert reasons["d"] == f"{inputs / 'd.in'}: asked to fail"
    assert reasons["e"] == f"{inputs / 'e.in'}: RuntimeError: boom second line"
    assert reasons["gone"] == f"{inputs / 'gone.in'}: no such file"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "toy" and manifest["params"] == {"times": 1}
    status = {i["key"]: i["status"] for i in manifest["items"]}
    assert status == {"a": "ok", "b": "ok", "c": "ok", "d": "failed", "e": "failed", "gone": "failed"}
    # A failed item is retried on the next run; the finished ones are not.
    (inputs / "d.in").write_text("ddd")
    CALLS.clear()
    r = st.run_stage(TOY, items, out, {"times": 1})
    assert "d" in CALLS and "a" not in CALLS and (out / "d.txt").read_text() == "DDD"


def test_partial_files_of_a_killed_run_are_removed(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.txt.123.partial").write_text("half")
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))


def test_other_stage_folder_and_duplicate_keys_are_refused(inputs, tmp_path):
    out = tmp_path / "out"
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    with pytest.raises(UserError, match="stage 'toy'"):
        st.run_stage(st.Stage("other", 1, _copy_upper), _items(inputs), out, {})
    item = _items(inputs)[0]
    with pytest.raises(UserError, match="duplicate"):
        st.run_stage(TOY, [item, item], tmp_path / "o2", {"times": 1})


def test_version_bump_redoes_everything(inputs, tmp_path):
    out = tmp_path / "out"
    st.run_stage(TOY, _items(inputs), out, {"times": 1})
    CALLS.clear()
    r = st.run_stage(st.Stage("toy", 2, _copy_upper), _items(inputs), out, {"times": 1})
    assert r.done == 3


def _interrupt_on_c(item, ctx):
    if Path(item.inputs[0]).read_text() == "ccc":
        raise KeyboardInterrupt  # like a kill: the loop stops before the manifest is saved
    return _copy_upper(item, ctx)


def test_items_finished_before_an_interrupt_are_not_redone(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        st.run_stage(st.Stage("toy", 1, _interrupt_on_c), _items(inputs), out, {"times": 1})
    assert not (out / "manifest.json").exists() and len(list((out / ".journal").iterdir())) == 2
    CALLS.clear()
    r = st.run_stage(TOY, _items(inputs), out, {"times": 1})
    assert CALLS == ["c"] and (r.done, r.cached) == (1, 2)
    assert not (out / ".journal").exists()


def _deferred_upper(item, ctx):
    text = Path(item.inputs[0]).read_text()

    def finish():
        if text == "bbb":
            raise st.ItemError(f"{item.inputs[0]}: failed while writing")
        out = f"{item.key}.txt"
        st.write_bytes(ctx.out_dir / out, text.upper().encode())
        return [out], {}

    return st.Deferred(finish)


@pytest.mark.parametrize("jobs", [1, 2])
def test_deferred_writes_complete_and_fail_like_direct_ones(inputs, tmp_path, jobs):
    out = tmp_path / "out"
    r = st.run_stage(st.Stage("deferred", 1, _deferred_upper), _items(inputs), out, {}, jobs=jobs)
    assert r.done == 2 and [f.reason for f in r.failed] == [f"{inputs / 'b.in'}: failed while writing"]
    assert (out / "a.txt").read_text() == "AAA" and (out / "c.txt").read_text() == "CCC"
    r = st.run_stage(st.Stage("deferred", 1, _deferred_upper), _items(inputs), out, {}, jobs=jobs)
    assert r.cached == 2 and len(r.failed) == 1
