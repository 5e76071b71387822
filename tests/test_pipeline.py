"""The study pipeline: dvc.yaml against the study plan, bad params failing fast, and
(slow) the whole DAG under the micro profile in a fresh clone, twice: the second `dvc repro` runs nothing; then a
user initialization added (only its stages run) and removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from studylib.report import collect, study

REPO = Path(__file__).resolve().parents[1]


def stages(root: Path) -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml's expanded stages: name -> (command, output paths)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            s.name: (s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd), [o.def_path for o in s.outs])
            for s in repo.index.stages
        }


def test_dvc_stages_match_the_study_plan() -> None:
    found = stages(REPO)
    for name, (cmd, _) in found.items():
        if "papermill" in cmd:
            assert "-k python3" in cmd, name
    outs = {o for _, os_ in found.values() for o in os_}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for family, runs in study.runs(params).items():
        for run in runs:
            assert run.out_dir in outs, f"{family}: {run.out_dir} is not a dvc.yaml output"
    for name in params["study"]["complexity"]["experiments"]:
        assert f"runs/complexity/{name}.json" in outs
    for kind in params["study"]["inits"]:
        assert f"inits/{kind}" in outs
    assert {"results/tables", "results/figures", "data/synthetic"} <= outs


def test_dvc_plots_follow_the_first_seed_of_table_1() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    s = params["study"]  # the sweep's shortest length (1x), first seed: one curve per initialization
    first = {
        r.out_dir for r in study.runs(params)["main"] if r.name.endswith(f"-x{s['schedules'][0]}-s{s['seeds'][0]}")
    }
    (plot,) = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    files = next(iter(plot.values()))["y"]
    assert {f.split("/dvclive/")[0] for f in files} == first
    assert all(f.endswith("/dvclive/plots/metrics/train/loss.tsv") for f in files)


def test_check_names_a_misspelt_experiment(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["study"]["ablations"]["attn_window_only"]["experiment"] = "attn_windowonly"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "studylib.report.study",
            "check",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / "ok.txt"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert "'attn_windowonly' is not an experiment" in r.stderr and "attn_window_only" in r.stderr
    assert not (tmp_path / "ok.txt").exists()


def test_finetune_notebook_fails_fast_on_unknown_experiment(tmp_path: Path) -> None:
    out = tmp_path / "nb.ipynb"
    r = subprocess.run(
        [
            "papermill",
            "-k",
            "python3",
            "--no-progress-bar",
            str(REPO / "notebooks/finetune.ipynb"),
            str(out),
            "-p",
            "experiment",
            "attn_golbal",
            "-p",
            "init",
            "mae",
            "-p",
            "out_dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode != 0
    assert "unknown experiment 'attn_golbal'" in r.stderr and "attn_global" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.slow
def test_micro_dag_runs_every_stage_then_nothing(micro_study) -> None:
    root, run = micro_study.root, micro_study.run
    assert micro_study.profile.returncode == 0, micro_study.profile.stderr
    r = micro_study.repro  # dvc repro, two stages at a time
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    declared = stages(root)
    for name, (_, outs) in declared.items():
        assert f"Running stage '{name}'" in r.stdout, f"{name} did not run"
        for out in outs:
            assert (root / out).exists(), f"{name}: {out} missing"
    summary = json.loads((root / "results/summary.json").read_text())
    for key in collect.KEYS:
        assert summary[key], f"summary.json: {key} empty"
    assert set(summary["main"]) == {"random", "supervised", "mocov3", "beit", "mae"}
    assert all("bbox/AP" in m and "bbox/AP_std" in m for m in summary["main"].values())
    assert len(list((root / "results/figures").glob("*.png"))) >= 5
    page = run(sys.executable, "-m", "studylib.report.offline_plots", "show", "-o", "plots_page")
    assert page.returncode == 0, page.stderr
    html = (root / "plots_page/index.html").read_text()
    assert "vegaEmbed('#" in html and "cdn.jsdelivr" not in html
    again = run("dvc", "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
    status = run("dvc", "status")
    assert "up to date" in status.stdout, status.stdout
    from test_inits import add_reproduce_remove  # your own initialization: only its stages run, then it goes

    add_reproduce_remove(root)


def run_metrics(root: Path) -> dict[str, dict]:
    """Every run folder's metrics.json (under runs/), without the measured times and memory."""
    measured = ("time", "mem", "fps")
    return {
        str(p.parent.relative_to(root)): {
            k: v for k, v in json.loads(p.read_text()).items() if not any(m in k for m in measured)
        }
        for p in sorted((root / "runs").glob("**/metrics.json"))
        if "dvclive" not in p.parts
    }


@pytest.mark.slow
def test_micro_dag_through_slurm_equals_the_local_one(micro_study, cluster) -> None:
    """Switching the finished study to SLURM re-runs nothing; forced through SLURM (each training stage one
    job), every run ends with the local run's numbers and DVC is up to date again."""
    root = micro_study.root
    local = run_metrics(root)
    assert len(local) >= 10
    repro = [sys.executable, "-m", "studylib.repro", "--jobs", "2", "--launcher", "slurm", "--cluster", str(cluster)]
    r = subprocess.run(repro, cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "Running stage" not in r.stdout, r.stdout[-4000:]
    r = subprocess.run([*repro, "--force"], cwd=root, capture_output=True, text=True, timeout=1800)
    dvc_errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]  # a stage's log drowns them
    assert r.returncode == 0, "\n".join([r.stdout[-4000:], *dvc_errors, r.stderr[-2000:]])
    assert run_metrics(root) == local
    trained = [p for p in (root / "runs").glob("**/launch.json")] + list((root / "inits").glob("*/launch.json"))
    assert len(trained) >= len(local) + 4  # every fine-tuning run and every local pre-training
    for p in trained:
        rec = json.loads(p.read_text())
        assert rec["launcher"] == "slurm" and rec["state"] == "COMPLETED" and (p.parent / "slurm").is_dir(), p
    status = subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
