"""Benchmark: the whole embedded-default study (`dvc repro` of every stage), from a fresh clone.

    python benchmarks/study.py [--jobs 2] [--install] [--out benchmarks/results/study_cpu.json]
    python benchmarks/study.py --repo DIR --timings T1.json [T2.json ...]   # summarise finished passes

Clones the repository's HEAD into a temporary folder (committed files only), optionally times
study.sh's install (`bash study.sh --install-only`) into a fresh virtual environment (`--install`), then runs
`python -m studylib.repro --jobs N` (dvc repro, N stages side by side) and writes:
- the wall time, and the reference measured in the same run: the sum of the stages' own durations
  (what running them one after another would take at the speed they ran), so the parallel gain is
  visible; time per stage family;
- the study's headline numbers from results/summary.json (Table 1's box AP per initialization, MAE
  minus random paired by seed with its 95% interval, the length each init needs to reach MAE's best),
  and the targets checked: ≤ 60 min (install included when measured), MAE − random's interval above
  zero, random needing a longer schedule than MAE, Figure 2's grid (≥ 3 lengths, random ≥ 4 and
  longest, ≥ 2 seeds per point), best initialization ≥ 20 box AP, none ≥ 80. The plain `dvc repro`
  figure is estimated as the sum of the stages' own durations (one after another).
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
sys.path.insert(0, str(ROOT))
from studylib.report.collect import epochs_to_reach  # noqa: E402


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
    conv = summary["convergence"]
    pair = main.get("mae", {}).get("bbox/AP_vs_random") or {}
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
        "mae_minus_random_box_AP_paired": {
            "epochs": pair.get("epochs"),
            "mean": None if pair.get("mean") is None else 100 * pair["mean"],
            "ci95": None if not pair.get("ci95") else [100 * x for x in pair["ci95"]],
            "seeds": pair.get("seeds"),
        },
        "epochs_to_reach_maes_best": epochs_to_reach(conv, "mae")[1],
        "targets": {
            "total_min": total_s / 60,
            "total_le_60_min": total_s <= 3600,
            "plain_dvc_repro_min_estimate": sum(durations.values()) / 60,  # the stages one after another
            "mae_beats_random_ci_above_zero": bool(pair.get("ci95")) and pair["ci95"][0] > 0,
            "random_needs_longer_than_mae": _longer(epochs_to_reach(conv, "mae")[1]),
            "figure2_grid": figure2_grid(conv),
            "best_box_AP_ge_20": max(b["mean"] for b in box.values()) >= 20,
            "none_saturates_lt_80": all(b["mean"] < 80 for b in box.values()),
        },
    }


def _longer(reach: dict[str, float | None]) -> bool:
    """Random needs a longer schedule than MAE to reach MAE's best (or never reaches it)."""
    return reach.get("random") is None or reach["random"] > reach["mae"]


def figure2_grid(conv: dict) -> bool:
    """#14's Figure 2: every init at >= 3 lengths (random >= 4, past the others' longest), >= 2 seeds each,
    one shared grid."""
    lengths = {i: {float(e) for e in pts} for i, pts in conv.items()}
    others = [v for i, v in lengths.items() if i != "random"]
    return (
        all(len(v) >= 3 for v in others)
        and len(lengths.get("random", ())) >= 4
        and max(lengths["random"]) > max(max(v) for v in others)
        and all(v <= lengths["random"] and v == others[0] for v in others)
        and all(len(p.get("seeds", [])) >= 2 for pts in conv.values() for p in pts.values())
    )


def commit(repo: Path) -> str:
    """The short hash of the clone's HEAD: the code and params the study ran."""
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def clone(dst: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    return dst


def install(repo: Path, venv: Path, env: dict[str, str]) -> tuple[float, str]:
    """study.sh's install (`bash study.sh --install-only`) into a new venv, whose bin/ env's PATH puts first
    (study.sh installs into the `python3` it finds); registers its `python3` kernel under env's JUPYTER_DATA_DIR."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run(["bash", "study.sh", "--install-only"], cwd=repo, check=True, env=env)
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
        result["work_dir"] = str(work)  # the clone: its results/ feed tools/study_readme.py
    result["measured_at_commit"] = commit(repo)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
