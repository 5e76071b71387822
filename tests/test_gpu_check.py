"""The prepared GPU check (benchmarks/gpu_check.sh): its CPU dry run exercises every step, it keeps to its
time budget, and it imports nothing that a bare GPU machine lacks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = 2 + 18 + 3 + 2  # correctness, ddp; Table 3 rows; Table 5 rows; the two sub-benchmarks


@pytest.mark.slow
def test_cpu_dry_run_measures_every_step(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-dry-run", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert d["mode"] == "dry" and d["finished"] and d["ok"], d
    assert d["errors"] == [] and d["skipped"] == []
    c = d["correctness"]
    assert c["iterations"] == 30 and len(c["losses"]) == 30 and c["finite"]
    assert c["last5_mean"] < c["first5_mean"] and c["falling"]
    assert d["ddp"]["backend"] == "gloo" and d["ddp"]["wrapper"] == "DistributedDataParallel"
    assert d["ddp"]["sync_batchnorm_layers"] > 0 and d["ddp"]["ok"]
    rows = d["table3"]
    expected = {
        (b, a, n)
        for n in (1, 2)
        for b in ("vit_base", "vit_large")
        for a in ("window", "hybrid", "global_ckpt", "global")
    } | {("resnet101", None, 1), ("resnet101", None, 2)}
    assert {(r["backbone"], r["attention"], r["images_per_gpu"]) for r in rows} == expected
    for r in rows:
        assert r["status"] == "ok" and r["losses_finite"] and r["train_s_per_iter"] > 0, r
        assert r["use_checkpoint"] == (r["attention"] == "global_ckpt")
        assert ("infer_s_per_image" in r) == (r["images_per_gpu"] == 1)
    assert [r["backbone"] for r in d["table5"]] == ["vit_base", "vit_large", "resnet101"]
    assert all(r["fps"] > 0 and r["batch"] == 1 for r in d["table5"])
    assert {"vit_large/hybrid_vs_window", "vit_large/global_ckpt_vs_window"} <= set(d["ratios_ours"])
    assert d["published_ratios"]["values"]["vitdet_table3"]["hybrid_vs_window"]["train_peak_mem_gb"] == 1.39
    for name in ("backbone", "train_step"):
        bench = d["benchmarks"][name]
        assert bench["status"] == "ok", bench
        assert (tmp_path / bench["file"]).is_file()
    # benchmarks/README.md's writer renders such a file (the GPU run's will look alike)
    readme = _tool()
    (tmp_path / "gpu_check").mkdir()
    (tmp_path / "gpu_check" / "gpu_check.json").write_text(json.dumps(d))
    readme.RESULTS = tmp_path
    lines = readme.gpu_check()
    assert (
        "ok = True" in lines[0] and sum("Table 3" in x for x in lines) == 18 and sum("Table 5" in x for x in lines) == 3
    )


def _tool():
    spec = importlib.util.spec_from_file_location("benchmarks_readme", REPO / "tools" / "benchmarks_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_readme_is_written_from_the_results() -> None:
    assert _tool().main(["--check"]) == 0, "benchmarks/README.md is stale: run python tools/benchmarks_readme.py"


def test_budget_stops_the_check_and_keeps_what_it_has(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--cpu-dry-run",
            "--budget-s",
            "0",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1  # nothing measured: not ok
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(d["skipped"]) == STEPS and all("time budget" in s for s in d["skipped"])
    assert d["environment"]["device_type"] == "cpu" and d["table3"] == [] and not d["ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_gpu_mode_without_a_gpu_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and "--cpu-dry-run" in proc.stderr


def test_imports_only_what_a_bare_gpu_machine_has() -> None:
    """The GPU machine has torch, torchvision, timm, numpy, pandas, seaborn, pyyaml (+ carried wheels of
    ruamel.yaml and pycocotools): importing the check must not need the project's other dependencies."""
    absent = [
        "dvc",
        "dvclive",
        "papermill",
        "nbformat",
        "faster_coco_eval",
        "tidecv",
        "tabulate",
        "vl_convert",
        "ipykernel",
        "jupyterlab",
    ]
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location('gpu_check', {str(REPO / "benchmarks" / "gpu_check.py")!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(sorted({{m.split('.')[0] for m in sys.modules}} & set({absent!r})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", f"imported at import time: {proc.stdout}"
