"""dvc.yaml's code dependencies are what each stage imports (issue #25, item 1).

Each stage family's command names the code it runs: a notebook (`notebooks/NAME.py`) or a module
(`python -m studylib.X`). A fresh interpreter executes that code's import statements (every one in the
notebook, at any depth of its cells, as the kernel would) and records each `studylib` file Python loaded,
then the test fails, naming the stage and the file, where a loaded file is covered by none of the stage's
`deps` (a file, or a folder above it). A file a stage loads but does not list is a change that leaves
`dvc status` clean and its results stale.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Executes the code's imports in a fresh interpreter and prints the studylib files loaded (relative paths).
RECORDER = r"""
import json, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
for stmt in json.loads(sys.argv[2]):
    exec(stmt, {})
for name in json.loads(sys.argv[3]):
    __import__(name)
loaded = sorted({str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(root / "studylib")})
print(json.dumps(loaded))
"""


def stage_families() -> dict[str, dict]:
    """Each stage family of dvc.yaml: its command and deps (a foreach family's `do:` body)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def imports_of(command: str) -> tuple[list[str], list[str]]:
    """The import statements of the notebooks a command runs, and the modules it runs with `-m`."""
    statements = []
    for notebook in re.findall(r"notebooks/\w+\.py", command):
        tree = ast.parse((REPO / notebook).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 or isinstance(node, ast.Import):
                statements.append(ast.unparse(node))
    runner = {"studylib.notebook"}  # the tool that runs a notebook (as papermill), not the stage's code
    modules = [m for m in re.findall(r"-m (studylib[\w.]*)", command) if m not in runner]
    return statements, modules


def loaded_files(command: str) -> list[str]:
    statements, modules = imports_of(command)
    out = subprocess.run(
        [sys.executable, "-c", RECORDER, str(REPO), json.dumps(statements), json.dumps(modules)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def uncovered(files: list[str], deps: list) -> list[str]:
    """The files no dependency covers (a dependency covers itself and everything under a folder)."""
    paths = [d if isinstance(d, str) else next(iter(d)) for d in deps]
    return [f for f in files if not any(f == p or f.startswith(p.rstrip("/") + "/") for p in paths)]


def test_uncovered_names_a_file_no_dependency_covers():
    files = ["studylib/data/coco.py", "studylib/config.py", "studylib/io.py"]
    assert uncovered(files, ["studylib/data", {"studylib/config.py": {}}]) == ["studylib/io.py"]
    assert uncovered(["studylib/database.py"], ["studylib/data"]) == ["studylib/database.py"]


@pytest.mark.parametrize("family", sorted(stage_families()))
def test_every_studylib_file_a_stage_imports_is_among_its_deps(family):
    stage = stage_families()[family]
    commands = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    files = sorted({f for command in commands for f in loaded_files(command)})
    assert files, f"stage {family}: its command loads no studylib file (the recorder found nothing)"
    missing = uncovered(files, stage.get("deps", []))
    assert not missing, f"dvc.yaml stage {family!r} imports {missing} but lists none of them in deps"
