"""Benchmark: the whole embedded-default study (`dvc repro` of every stage), from a fresh clone.

    python benchmarks/study.py [--jobs 2] [--install] [--out benchmarks/results/study_cpu.json]
    python benchmarks/study.py --repo DIR --timings T1.json [T2.json ...]   # summarise finished passes

Clones the repository's HEAD into a temporary folder (committed files only), optionally times
`pip install -e ".[dev]"` into a fresh virtual environment (`--install`), then runs
`python -m studylib.repro --jobs N` (dvc repro, N stages side by side) and writes:
- the wall time, and the reference measured in the same run: the sum of the stages' own durations
  (what running them one after another would take at the speed they ran), so the parallel gain is
  visible; time per stage family;
- the study's headline numbers from results/summary.json (box AP mean ± std per initialization,
  MAE minus random at the shortest schedule), and the issue's targets checked: ≤ 60 min (install
  included when measured), best initialization ≥ 20 box AP, none ≥ 80, ≥ 3 seeds in Table 1.
The machine's core count and load average are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def family(stage: str) -> str:
    return stage.split("@", 1)[0]


def summarise(repo: Path, t: dict, wall_s: float, install_s: float | None, jobs: int) -> dict:
    spans = t["stages"]
    durations = {k: v["end_s"] - v["start_s"] for k, v in spans.items()}
    families: dict[str, float] = {}
    for k, d in durations.items():
        families[family(k)] = families.get(family(k), 0.0) + d
    summary = json.loads((repo / "results/summary.json").read_text())
    main = summary["main"]
    box = {
        i: {"mean": 100 * m["bbox/AP"], "std": 100 * m.get("bbox/AP_std", 0.0), "n_seeds": m["n_seeds"]}
        for i, m in main.items()
    }
    mae, rnd = ({float(e): p for e, p in summary["convergence"].get(i, {}).items()} for i in ("mae", "random"))
    at = min(set(mae) & set(rnd), default=None)  # the shortest schedule both were fine-tuned with
    total_s = wall_s + (install_s or 0.0)
    return {
        "benchmark": "study",
        "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "python": platform.python_version()},
        "jobs": jobs,
        "stages": len(durations),
        "install_s": install_s,
        "dvc_repro_wall_s": wall_s,
        "reference_sum_of_stage_s": sum(durations.values()),
        "parallel_gain": sum(durations.values()) / wall_s if wall_s else None,
        "seconds_by_family": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        "slowest_stages_s": dict(sorted(durations.items(), key=lambda kv: -kv[1])[:8]),
        "box_AP": box,
        "mae_minus_random_box_AP_at_shortest_common_schedule": (
            None if at is None else {"epochs": at, "delta": 100 * (mae[at]["bbox/AP"] - rnd[at]["bbox/AP"])}
        ),
        "targets": {
            "total_min": total_s / 60,
            "total_le_60_min": total_s <= 3600,
            "best_box_AP_ge_20": max(b["mean"] for b in box.values()) >= 20,
            "none_saturates_lt_80": all(b["mean"] < 80 for b in box.values()),
            "ge_3_seeds": all(b["n_seeds"] >= 3 for b in box.values()),
        },
    }


def clone(dst: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    return dst


def install(repo: Path, venv: Path, env: dict[str, str]) -> tuple[float, str]:
    """pip install into a new venv and register its `python3` kernel under env's JUPYTER_DATA_DIR."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "-e", ".[dev]"], cwd=repo, check=True)
    subprocess.run(
        [py, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True, capture_output=True, env=env
    )
    return time.time() - t0, py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--install", action="store_true", help="time pip install into a fresh venv first")
    ap.add_argument("--repo", help="an already reproduced clone to summarise (with --timings)")
    ap.add_argument(
        "--timings",
        nargs="+",
        help="the runner's --timings files of successive passes over that "
        "clone (a stage counts from the pass where it succeeded)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/study_cpu.json"))
    a = ap.parse_args()
    if a.repo and a.timings:
        repo, stages, wall, passes = Path(a.repo), {}, 0.0, []
        for f in a.timings:
            t = json.loads(Path(f).read_text())
            wall += t["wall_s"]
            passes.append(
                {
                    "file": Path(f).name,
                    "wall_s": t["wall_s"],
                    "failed": sorted(k for k, v in t["stages"].items() if v.get("rc", 0) != 0),
                }
            )
            for k, v in t["stages"].items():
                if k not in stages or stages[k].get("rc", 0) != 0:
                    stages[k] = v
        result = summarise(repo, {"stages": stages}, wall, None, a.jobs)
        result["passes"] = passes
    else:
        work = Path(tempfile.mkdtemp(prefix="study_bench_"))
        repo = clone(work / "repo")
        env = {**os.environ, "PYTHONPATH": str(repo)}
        if a.install:  # the venv's kernel spec lives in the work folder: the user's `python3` kernel is untouched
            env["JUPYTER_DATA_DIR"] = str(work / "jupyter")
            env["PATH"] = f"{work / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
        install_s, py = install(repo, work / "venv", env) if a.install else (None, sys.executable)
        t0 = time.time()
        r = subprocess.run(
            [py, "-m", "studylib.repro", "--jobs", str(a.jobs), "--timings", str(work / "t.json")], cwd=repo, env=env
        )
        wall = time.time() - t0
        if r.returncode != 0:
            print(f"dvc repro failed (exit {r.returncode}) in {repo}", file=sys.stderr)
            return r.returncode
        result = summarise(repo, json.loads((work / "t.json").read_text()), wall, install_s, a.jobs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
