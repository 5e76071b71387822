"""`python -m studylib.repro`: independent DVC stages side by side, dependents after, failures stop it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from studylib import repro

# Each stage records when it started and ended (seconds since the epoch) in its output file.
STAGE = (
    'python -c "import time,sys; t=time.time(); time.sleep({sleep}); '
    "{fail}open('{out}','w').write(f'{{t}} {{time.time()}}')\""
)


def project(root: Path, fail_b: bool = False) -> Path:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    fail = "sys.exit(3); " if fail_b else ""
    (root / "dvc.yaml").write_text(f"""stages:
  a:
    cmd: {STAGE.format(sleep=2, fail="", out="a.txt")}
    outs: [a.txt]
  b:
    cmd: {STAGE.format(sleep=2, fail=fail, out="b.txt")}
    outs: [b.txt]
  c:
    cmd: {STAGE.format(sleep=0, fail="", out="c.txt")}
    deps: [a.txt, b.txt]
    outs: [c.txt]
  d:
    cmd: {STAGE.format(sleep=0, fail="", out="d.txt")}
    deps: [a.txt]
    outs: [d.txt]
""")
    return root


def span(path: Path) -> tuple[float, float]:
    start, end = map(float, path.read_text().split())
    return start, end


def test_plan_follows_dvc_graph(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    p = repro.plan(root)
    assert set(p.order) == {"a", "b", "c", "d"}
    assert p.order.index("c") > max(p.order.index("a"), p.order.index("b"))
    assert p.needs["c"] == {"a", "b"} and p.needs["d"] == {"a"} and p.needs["a"] == set()
    only_d = repro.plan(root, ["d"])
    assert set(only_d.order) == {"a", "d"}
    with pytest.raises(ValueError, match="no stage nope; stages: a, b, c, d"):
        repro.plan(root, ["nope"])


@pytest.mark.slow
def test_independent_stages_overlap_and_dvc_records_all(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    assert repro.run(root, jobs=2, log=lambda *_: None, timings=tmp_path / "t.json") == 0
    a, b, c = span(root / "a.txt"), span(root / "b.txt"), span(root / "c.txt")
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["jobs"] == 2 and set(t["stages"]) == {"a", "b", "c", "d"}
    assert all(s["rc"] == 0 and 0 <= s["start_s"] < s["end_s"] <= t["wall_s"] for s in t["stages"].values())
    assert t["stages"]["c"]["start_s"] >= max(t["stages"]["a"]["end_s"], t["stages"]["b"]["end_s"])
    assert a[0] < b[1] and b[0] < a[1], f"a {a} and b {b} did not run side by side"
    assert c[0] >= max(a[1], b[1]), "c started before its dependencies ended"
    status = subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    again = subprocess.run(
        [sys.executable, "-m", "studylib.repro", "-j", "2"], cwd=root, capture_output=True, text=True
    )
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout


@pytest.mark.slow
def test_a_failed_stage_stops_its_dependents(tmp_path: Path) -> None:
    root = project(tmp_path / "p", fail_b=True)
    lines: list[str] = []
    assert repro.run(root, jobs=2, log=lines.append) == 1
    assert any("FAILED b" in line for line in lines), lines
    assert (root / "a.txt").exists() and not (root / "b.txt").exists()
    assert not (root / "c.txt").exists()  # c needs b: never started
    assert "failed: b" in lines[-1]
