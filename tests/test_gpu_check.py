"""The GPU check (benchmarks/gpu_check.py and its device command, benchmarks/gpu_device.sh) as the GPU
machine runs it: a Python that imports nothing for free, wheels installed without an index and
without their dependencies, a test module that cannot be imported, the JSON where the machine
returns it after every part, a deadline that holds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def _bare_env(**extra: str) -> dict[str, str]:
    """For ``python -S``: no site, so the venv's packages come by PYTHONPATH alone, as on the GPU
    machine the carried wheels do."""
    paths = [str(REPO), sysconfig.get_paths()["purelib"]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


# 1. Python 3.12 does not import importlib.util at start-up (python -S on 3.11 does the same)

def test_the_check_runs_under_python_without_site_and_writes_to_out(tmp_path):
    proc = subprocess.run([sys.executable, "-S", str(REPO / "benchmarks" / "gpu_check.py"), "--only", "environment",
                           "metrics"], env=_bare_env(OUT=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["environment"]["flags"].count("-S") == 1 and result["environment"]["site_imported"] is False
    assert "error" not in result["environment"] and "error" not in result["metrics"]
    assert result["metrics"]["noisy_psnr_max_abs_diff"] == 0.0  # CPU against itself here


# 2. wheels installed with --no-index --no-deps --target, as the device command does

def _wheel(folder: Path, name: str, requires: str) -> Path:
    """A minimal pure-Python wheel whose metadata needs a package no index here has."""
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requires}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def test_the_device_command_installs_wheels_whose_dependencies_are_not_carried(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "carriedpkg", "numpy-that-no-index-has>=99")
    site = tmp_path / "site"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_device.sh"), "--only", "environment"],
                          env=_bare_env(GPU_PYTHON=sys.executable, GPU_WHEELS=str(wheels), GPU_SITE=str(site),
                                        OUT=str(tmp_path / "out")), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (site / "carriedpkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert json.loads((tmp_path / "out" / "gpu-check.json").read_text())["environment"]["cuda"] is False


# 3. one test module that cannot be imported does not hide the CUDA tests

def test_cuda_tests_are_collected_past_a_module_that_cannot_be_imported(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_broken.py").write_text("import a_module_the_gpu_machine_lacks\n")
    (tests / "test_gpu.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_a():\n    pass\n\n"
                                       "def test_not_cuda():\n    pass\n")
    check = gpu_check.Check(tmp_path / "out.json", 120)
    r = check.part("cuda_tests", 0, lambda: gpu_check.cuda_tests(check, cuda=False, tests=tests))
    assert r["collected"] == 1
    assert any("a_module_the_gpu_machine_lacks" in line for line in r["output_tail"])


# 4. the JSON after every part, whole lines, a failing part's last 40 lines

def test_results_are_written_after_every_part_and_failures_keep_their_tail(tmp_path):
    out = tmp_path / "gpu-check.json"
    check = gpu_check.Check(out, 120)
    long = "x" * 5000
    check.part("first", 0, lambda: {"value": long})

    def second() -> dict:
        assert json.loads(out.read_text())["first"]["value"] == long  # on disk before the next part starts
        check.run([sys.executable, "-c", "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"], 30)
        return {}

    r = check.part("second", 0, second)
    assert r["error"].startswith("exit 3") and r["output_tail"] == [f"line {i}" for i in range(60, 100)]
    assert json.loads(out.read_text())["second"]["output_tail"][-1] == "line 99"


def test_out_names_the_results_file(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.default_out() == tmp_path / "gpu-check.json"
    monkeypatch.delenv("OUT")
    assert gpu_check.default_out() == REPO / "build" / "gpu-check.json"


# 6. one deadline: every sub-process's timeout is capped at the time left; what no longer fits is skipped

def test_the_deadline_caps_sub_processes_and_skips_what_does_not_fit(tmp_path):
    check = gpu_check.Check(tmp_path / "out.json", 8)
    t0 = time.monotonic()
    r = check.part("slow", 0, lambda: check.run([sys.executable, "-c", "import time; time.sleep(60)"], 300))
    assert r["error"].startswith("timed out") and time.monotonic() - t0 < 8
    assert "skipped" in check.part("late", 30, lambda: {})
    assert gpu_check.DEADLINE == 480


@pytest.mark.parametrize("cuda", [False])
def test_the_torchrun_smoke_runs_ddp_in_a_one_process_group_and_resumes(tmp_path, cuda):
    check = gpu_check.Check(tmp_path / "out.json", 240)
    r = check.part("torchrun_smoke", 0, lambda: gpu_check.torchrun_smoke(check, cuda))
    assert r.get("ok") is True, r
    assert r["backend"] == "gloo" and r["ddp"] is True and r["steps"] == list(range(1, 9))
