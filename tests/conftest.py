"""Shared fixtures: a fresh clone of the repository and, once per session, the micro study run in one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fresh_clone(dst: Path) -> Path:
    """The repository's tracked files (as in the working tree) in a new git repository."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / f.decode()
        if src.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f.decode())
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=dst, check=True)
    return dst


@dataclass
class MicroStudy:
    root: Path  # a fresh clone with the micro profile, reproduced
    profile: subprocess.CompletedProcess  # `python -m studylib.profile micro`
    repro: subprocess.CompletedProcess  # `python -m studylib.repro --jobs 2`

    def run(self, *cmd: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory: pytest.TempPathFactory) -> MicroStudy:
    """The whole DAG under the micro profile, run once per session in a fresh clone (two stages at a time).

    Tests that use it read its outputs or add their own runs beside them; none re-runs the study."""
    root = fresh_clone(tmp_path_factory.mktemp("micro") / "repo")
    run = lambda *cmd: subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800)  # noqa: E731
    profile = run(sys.executable, "-m", "studylib.profile", "micro")
    repro = run(sys.executable, "-m", "studylib.repro", "--jobs", "2") if profile.returncode == 0 else profile
    return MicroStudy(root, profile, repro)


@pytest.fixture
def study_copy(micro_study: MicroStudy, tmp_path: Path) -> Path:
    """A copy of the finished micro study (git, DVC cache and lock included) that a test may change."""
    assert micro_study.repro.returncode == 0, micro_study.repro.stdout[-4000:] + micro_study.repro.stderr[-4000:]
    return Path(shutil.copytree(micro_study.root, tmp_path / "study", symlinks=True))


def slurm_reachable() -> str | None:
    """None when SLURM takes jobs (started here from an installed SLURM if need be), else why not."""
    from studylib.launch import slurm

    why = slurm.unavailable()
    if why is not None and os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "tools" / "slurm_up.sh"), "--no-install"], capture_output=True, timeout=120)
        why = slurm.unavailable()
    return why


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Path:
    why = slurm_reachable()
    if why is not None:
        message = f"SLURM not reachable: {why}; `sudo bash tools/slurm_up.sh` starts a one-node test cluster"
        if os.environ.get("STUDYLIB_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    path.write_text("slurm: {cpus_per_task: 1, time_min: 30, poll_s: 0.5}\n")
    return path
