"""Shared fixtures: the micro study (the whole DAG under the micro profile in a fresh clone), run once per session."""
from __future__ import annotations

import shutil
import subprocess
import sys
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


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A fresh clone with the micro profile applied and every stage run (`studylib.repro --jobs 2`, i.e. dvc
    repro two stages at a time): (its root, the repro's completed process). Tests must not change it: they
    work on `study_copy`."""
    root = fresh_clone(tmp_path_factory.mktemp("micro") / "repo")
    r = subprocess.run([sys.executable, "-m", "studylib.profile", "micro"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "studylib.repro", "--jobs", "2"], cwd=root, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return root, r


@pytest.fixture
def study_copy(micro_study: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> Path:
    """A copy of the finished micro study (git, DVC cache and lock included) that a test may change."""
    return Path(shutil.copytree(micro_study[0], tmp_path / "study", symlinks=True))
