"""Every command the README shows works as written: the Quickstart's code blocks and each row of "How to
use it", run in a fresh clone on the micro study (`micro_study`), with placeholders (NAME, DIR, my_vit.pth,
results.json, ...) bound to a micro-study run or file.

A command the README adds must be added to `RUNS` (the fast test fails naming its README line until it is).
What cannot run here is run as far as it can go, and `AS_FAR_AS_IT_GOES` says how:
- `bash test.sh` collects the tests instead of running them (this test is part of them);
- `conda env create` (no conda here): environment.yml must pin what pyproject.toml pins;
- `torchrun --nproc-per-node 8 ...`: two processes on CPU;
- `python -m studylib.profile paper`: the profile is applied and the paper study's plan validated (no COCO here);
- `jupyter lab`: the server starts, headless, and serves the notebooks.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXECUTABLES = ("python", "python3", "pip", "dvc", "papermill", "torchrun", "pytest", "jupyter", "bash", "conda")
PY = "python"  # resolved on PATH: the test venv's interpreter, as a reader's shell would
SMOKE = ["--params", "params.yaml", "--experiment", "smoke"]

# README command (exactly as written) -> the commands run for it in the micro study's clone
RUNS: dict[str, list[list[str]]] = {
    "bash study.sh": [["bash", "study.sh"]],  # installs into the test's venv; the study is up to date: seconds
    "bash test.sh": [["bash", "test.sh"]],  # with PYTEST_ADDOPTS=--collect-only (see module docstring)
    'pip install -e ".[dev]"': [["pip", "install", "-q", "-e", ".[dev]"]],
    "dvc repro": [["dvc", "repro"]],
    "pytest": [[PY, "-m", "pytest", "--collect-only", "-q"]],
    "python -m studylib.train --params params.yaml --experiment smoke --out runs/smoke": [
        [PY, "-m", "studylib.train", *SMOKE, "--out", "runs/smoke"]
    ],
    "python -m studylib.repro --jobs 2": [[PY, "-m", "studylib.repro", "--jobs", "2"]],
    "dvc exp run -S 'scales.embedded.train.lr=2e-4' --queue": [
        ["dvc", "exp", "run", "-S", "scales.embedded.train.lr=2e-4", "--queue"]
    ],
    "dvc queue start": [["dvc", "queue", "start"]],
    "python -m studylib.report.offline_plots show": [[PY, "-m", "studylib.report.offline_plots", "show"]],
    "python -m studylib.report.study plan [--json]": [
        [PY, "-m", "studylib.report.study", "plan"],
        [PY, "-m", "studylib.report.study", "plan", "--json"],
    ],
    "python -m studylib.train --params params.yaml --experiment NAME --out DIR [--set train.lr=1e-4]": [
        [PY, "-m", "studylib.train", *SMOKE, "--out", "runs/readme_train"],
        [PY, "-m", "studylib.train", *SMOKE, "--out", "runs/readme_train_lr", "--set", "train.lr=1e-4"],
    ],
    "papermill notebooks/finetune.ipynb out.ipynb -k python3 -p experiment NAME -p out_dir DIR": [
        [
            "papermill",
            "notebooks/finetune.ipynb",
            "out.ipynb",
            "-k",
            "python3",
            "-p",
            "experiment",
            "smoke",
            "-p",
            "out_dir",
            "runs/readme_nb",
        ]
    ],
    "torchrun --nproc-per-node 8 [--nnodes N --rdzv-endpoint HOST:PORT] -m studylib.train ...": [
        ["torchrun", "--nproc-per-node", "2", "-m", "studylib.train", *SMOKE, "--out", "runs/readme_ddp"]
    ],
    "python -m studylib.checkpoints inspect my_vit.pth": [
        [PY, "-m", "studylib.checkpoints", "inspect", "inits/mae/checkpoint.pth"]
    ],
    "python -m studylib.inits add NAME --checkpoint my_vit.pth":  # added, listed, removed: the study stays as it was
    [
        [PY, "-m", "studylib.inits", "add", "readme_init", "--checkpoint", "inits/mae/checkpoint.pth"],
        [PY, "-m", "studylib.inits", "list"],
        [PY, "-m", "studylib.inits", "remove", "readme_init"],
    ],
    "python -m studylib.evaluate --gt instances_val2017.json --dt results.json --type bbox": [
        [PY, "-m", "studylib.evaluate", "--gt", "{val_ann}", "--dt", "{bbox_results}", "--type", "bbox"]
    ],
    "conda env create -f environment.yml": [],  # checked by test_conda_environment_matches_the_pins
    "python -m studylib.profile micro": [[PY, "-m", "studylib.profile", "micro"]],
    "python -m studylib.profile paper": [
        [PY, "-m", "studylib.profile", "paper"],
        [PY, "-m", "studylib.report.study", "check", "--params", "params.yaml", "--out", "paper_plan_ok.txt"],
    ],
    "jupyter lab": [],  # started headless by test_jupyter_lab_serves_the_notebooks
}
# run last: they change the clone's params (the profile) or take long in the background (the queue)
LAST = ("dvc exp run -S 'scales.embedded.train.lr=2e-4' --queue", "dvc queue start", "python -m studylib.profile paper")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of every command in the Quickstart's code blocks and in "How to use it"'s table."""
    found, section, fenced = [], "", False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        if section not in ("Quickstart", "How to use it"):
            continue
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            command = re.split(r"\s{2,}#", line)[0].strip()
            if command and not command.startswith("#"):
                found.append((n, command))
        elif line.startswith("|") and section == "How to use it":
            cells = [c.strip() for c in line.strip("|").split("|")]
            for span in re.findall(r"`([^`]+)`", cells[-1] if len(cells) > 1 else ""):
                if span.split()[0] in EXECUTABLES:
                    found.append((n, span))
    return found


COMMANDS = readme_commands((REPO / "README.md").read_text())


def test_every_readme_command_is_run_by_this_test() -> None:
    missing = [f"README.md:{n}: {c}" for n, c in COMMANDS if c not in RUNS]
    assert not missing, "commands the README shows that tests/test_readme.py does not run:\n" + "\n".join(missing)
    assert {"bash study.sh", "bash test.sh"} <= {c for _, c in COMMANDS}, "the Quickstart's two commands"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() == "exec bash test.sh"


def test_conda_environment_matches_the_pins() -> None:
    """`conda env create -f environment.yml` as far as it goes here (no conda): the same pinned packages."""
    import tomllib

    pins = {
        re.split(r"[=<>\[ ]", d)[0].lower(): d.split(";")[0].split("#")[0].replace(" ", "")
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if "==" in d
    }
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [x for x in env["dependencies"] if isinstance(x, dict)]
    listed = {re.split(r"[=<>\[ ]", d)[0].lower(): d.replace(" ", "") for p in pip for d in p["pip"]}
    wrong = {name: (pin, listed.get(name)) for name, pin in pins.items() if listed.get(name) != pin}
    assert not wrong, f"environment.yml differs from pyproject.toml's pins: {wrong}"


def _bind(cmd: list[str], root: Path) -> list[str]:
    val_ann = next((root / "data").rglob("instances_val*.json"))
    bbox = next(p for p in sorted((root / "runs").rglob("coco_results_bbox.json")))
    return [c.format(val_ann=val_ann, bbox_results=bbox) for c in cmd]


@pytest.fixture(scope="module")
def venv_env(tmp_path_factory) -> dict:
    """A virtual environment over this one's packages, first on PATH, so that the README's install commands
    install into it (not into the environment running the tests)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = dict(
        os.environ,
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        PYTEST_ADDOPTS="--collect-only",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        JUPYTER_DATA_DIR=str(venv / "jupyter"),
    )  # nothing written to the user's Jupyter folders
    return env


@pytest.mark.slow
def test_every_readme_command_works_as_written(micro_study, venv_env) -> None:
    assert micro_study.repro.returncode == 0, micro_study.repro.stderr[-3000:]
    root, failures = micro_study.root, []
    order = [c for c in COMMANDS if c[1] not in LAST] + [c for name in LAST for c in COMMANDS if c[1] == name]
    for line, command in order:
        for cmd in RUNS[command]:
            cmd = _bind(cmd, root)
            r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1200, env=venv_env)
            if r.returncode != 0:
                failures.append(
                    f"README.md:{line}: {command}\n  ran: {' '.join(cmd)}\n  rc {r.returncode}: "
                    f"{(r.stdout[-1500:] + r.stderr[-1500:]).strip()}"
                )
            if command == "dvc queue start":
                failures += _wait_for_queue(root, venv_env, line)
    assert not failures, "\n".join(failures)
    # what the commands wrote, where the README says they write it
    assert json.loads((root / "runs/smoke/metrics.json").read_text())["bbox/AP"] >= 0
    assert (root / "runs/readme_nb/metrics.json").is_file() and (root / "out.ipynb").is_file()
    # a notebook parameter left at its default keeps the experiment's own value (smoke: random init)
    assert yaml.safe_load((root / "runs/readme_nb/config.yaml").read_text())["init"]["kind"] == "random"
    assert (root / "runs/readme_ddp/metrics.json").is_file()
    assert yaml.safe_load((root / "runs/readme_train_lr/config.yaml").read_text())["train"]["lr"] == 1e-4
    assert (root / "paper_plan_ok.txt").is_file()


def _wait_for_queue(root: Path, env: dict, line: int, timeout: float = 1200) -> list[str]:
    """`dvc queue start` returns at once; the queued experiment must then succeed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(["dvc", "queue", "status"], cwd=root, capture_output=True, text=True, env=env).stdout
        if "Success" in status:
            return []
        if "Failed" in status:
            logs = subprocess.run(
                ["dvc", "queue", "logs", "--follow"], cwd=root, capture_output=True, text=True, env=env, timeout=60
            )
            return [f"README.md:{line}: dvc queue start: the queued experiment failed\n{status}\n{logs.stdout[-2000:]}"]
        time.sleep(5)
    return [f"README.md:{line}: dvc queue start: the queued experiment did not finish in {timeout:.0f} s"]


@pytest.mark.slow
def test_jupyter_lab_serves_the_notebooks(tmp_path: Path) -> None:
    """`jupyter lab`, headless: the server starts in the repository and lists the notebooks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "readme-test"
    proc = subprocess.Popen(
        [
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            "--allow-root",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path)),
    )
    try:
        listing = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}", timeout=5
                ) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(1)
        assert listing is not None, "jupyter lab did not answer within 2 minutes"
        names = {item["name"] for item in listing["content"]}
        assert {"finetune.ipynb", "report.ipynb"} <= names, names
    finally:
        proc.terminate()
        proc.wait(timeout=60)
