"""The notebooks: paired with their jupytext scripts (the code DVC depends on), committed without outputs,
thin; run where JupyterLab runs them (kernel in notebooks/) and where DVC does (the root); defaults that mean
the experiment's own values; (slow) every notebook on the micro study, and a notebook executed and saved in
place leaving `dvc status` up to date."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from studylib import config

REPO = Path(__file__).resolve().parents[1]
NAMES = ("data", "pretrain", "finetune", "complexity", "report", "explore")


def committed(root: Path, name: str) -> nbformat.NotebookNode:
    """notebooks/NAME.ipynb as git holds it (the index: what the next commit stores); the working file
    outside a git checkout."""
    rel = f"notebooks/{name}.ipynb"
    r = subprocess.run(["git", "show", f":{rel}"], cwd=root, capture_output=True, text=True)
    return nbformat.reads(r.stdout if r.returncode == 0 else (root / rel).read_text(), as_version=4)


def outputs_in(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of code cells carrying outputs or an execution count."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]


def papermill(notebook: Path, out: Path, cwd: Path, *params: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`papermill NOTEBOOK OUT -k python3 -p ...` with the kernel started in `cwd` (papermill's --cwd)."""
    args = [
        a
        for k, v in zip(params[::2], params[1::2])
        for a in (("-y", f"{k}: {v}") if v.startswith("[") else ("-p", k, v))
    ]  # -y: YAML (lists)
    return subprocess.run(
        ["papermill", str(notebook), str(out), "-k", "python3", "--no-progress-bar", "--cwd", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stdout_of(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream" and o.name == "stdout"
    )


def test_every_notebook_is_a_pair() -> None:
    assert {p.stem for p in (REPO / "notebooks").glob("*.ipynb")} == set(NAMES)
    assert {p.stem for p in (REPO / "notebooks").glob("*.py")} == set(NAMES)
    assert not (REPO / "tools" / "build_notebooks.py").exists()  # no notebook code in string literals elsewhere


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_script_and_is_thin(name: str) -> None:
    """The .ipynb papermill and JupyterLab open holds exactly the cells of the .py DVC depends on."""
    script = jupytext.read(REPO / "notebooks" / f"{name}.py")
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    cells = lambda n: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in n.cells]  # noqa: E731
    assert cells(nb) == cells(script), f"notebooks/{name}: run `jupytext --sync notebooks/{name}.py`"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])].__len__() == 1, "one parameters cell"
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))], (
                f"{name}: notebooks are thin (no def / class / lambda)"
            )
    assert "os.chdir(project_root())" in script.cells[1].source, f"{name}: the first code cell finds the root"


@pytest.mark.parametrize("name", NAMES)
def test_no_output_reaches_git(name: str) -> None:
    """What git holds (its index, so a `git add` of a notebook saved with outputs fails here) has no outputs."""
    nb = committed(REPO, name)
    assert outputs_in(nb) == [], f"notebooks/{name}.ipynb is staged with outputs: `nbstripout notebooks/{name}.ipynb`"
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata


def test_stages_depend_on_the_scripts_they_run() -> None:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            cmds = [stage.cmd] if isinstance(stage.cmd, str) else stage.cmd
            deps = {d.def_path for d in stage.deps}
            for cmd in cmds:
                for script in re.findall(r"notebooks/\w+\.py", cmd):
                    assert re.search(rf"python -m studylib\.notebook [^|;&]* {script} ", cmd), stage.name
                    assert script in deps, f"{stage.name}: runs {script} without depending on it"
            assert not [d for d in deps if d.startswith("notebooks/") and d.endswith(".ipynb")], stage.name


SCRIPT = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%
import os

# %% tags=["parameters"]
n = 1
name = "x"

# %%
print(n * 2, name, os.getcwd() == {cwd!r})
"""


def executed(path: Path) -> list[tuple[str, list[str], str]]:
    """(source, tags, stdout) of each code cell of an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    out = lambda c: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")  # noqa: E731
    return [(c.source, c.metadata.get("tags", []), out(c)) for c in nb.cells if c.cell_type == "code"]


def test_the_stage_runner_is_the_jupytext_papermill_pipe(tmp_path: Path) -> None:
    """`python -m studylib.notebook S.py OUT -p ...` (DVC's stages) executes what `jupytext --to ipynb -o - S.py |
    papermill - OUT -p ...` does: the same cells, the parameters injected, the same outputs; bad usage exits 2."""
    (tmp_path / "s.py").write_text(SCRIPT.format(cwd=str(tmp_path)))
    opts = ["-k", "python3", "--no-progress-bar", "-p", "n", "21", "-p", "name", "stage"]
    ours = subprocess.run(
        [sys.executable, "-m", "studylib.notebook", "s.py", "ours.ipynb", *opts], cwd=tmp_path, capture_output=True
    )
    assert ours.returncode == 0, ours.stderr.decode()[-2000:]
    pipe = subprocess.run(
        f"jupytext -q --to ipynb -o - s.py | papermill - pipe.ipynb {' '.join(opts)}",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
    )
    assert pipe.returncode == 0, pipe.stderr.decode()[-2000:]
    cells = executed(tmp_path / "ours.ipynb")
    assert cells == executed(tmp_path / "pipe.ipynb")
    assert [c for c in cells if "injected-parameters" in c[1]][0][0] == '# Parameters\nn = 21\nname = "stage"\n'
    assert cells[-1][2] == "42 stage True\n"
    bad = subprocess.run(
        [sys.executable, "-m", "studylib.notebook", "s.py", "o.ipynb", "--no-such"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "No such option '--no-such'" in bad.stderr and not (tmp_path / "o.ipynb").exists()


def test_the_stage_runner_skips_the_iri_checkers_yet_still_validates_notebooks() -> None:
    """The runner's process never builds rfc3987_syntax's grammars (1.3 s a stage), and nbformat's validation
    there still accepts a notebook and rejects a broken one (its schemas use no IRI format)."""
    code = (
        "import sys, studylib.notebook, nbformat\n"
        "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
        "nbformat.validate(nb)\n"
        "del nb.cells[0]['source']\n"
        "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError as e:\n    print('rejected:', e.message)\n"
        "print('rfc3987_syntax loaded:', sys.modules.get('rfc3987_syntax') is not None)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rejected: 'source' is a required property" in r.stdout
    assert r.stdout.rstrip().endswith("rfc3987_syntax loaded: False")


def test_the_readme_notebook_command_keeps_the_experiments_own_values(tmp_path: Path) -> None:
    """`papermill notebooks/finetune.ipynb out.ipynb -k python3 -p experiment smoke -p out_dir DIR` (the
    README's), every other parameter at its default: smoke's own init, checkpoint, seed and schedule."""
    out = tmp_path / "out.ipynb"
    r = subprocess.run(
        [
            "papermill",
            "notebooks/finetune.ipynb",
            str(out),
            "-k",
            "python3",
            "-p",
            "experiment",
            "smoke",
            "-p",
            "out_dir",
            str(tmp_path / "nb"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in stdout_of(out).splitlines() if ln.startswith("resolved:"))
    resolved = json.loads(line.removeprefix("resolved:"))
    own = config.load(REPO / "params.yaml", "smoke")
    assert resolved["init.kind"] == own.init.kind == "random" and resolved["init.checkpoint"] is None
    assert resolved["train.seed"] == own.train.seed and resolved["train.epochs"] == own.train.epochs
    assert resolved["train.max_iters"] == own.train.max_iters and resolved["sets"] == []
    assert json.loads((tmp_path / "nb" / "metrics.json").read_text())["train/iterations"] == own.train.max_iters


def test_the_root_is_found_from_notebooks_and_nowhere_else(tmp_path: Path) -> None:
    from studylib.io import project_root

    assert project_root(REPO / "notebooks") == REPO == project_root(REPO)
    with pytest.raises(ValueError, match="not the study's root|neither it nor a parent"):
        project_root(tmp_path)


# -- on the micro study (slow): the kernel in notebooks/, as Jupyter Server starts it ------------------
RUNS = {  # notebook -> parameters (outputs away from the DVC outputs where a default would overwrite one)
    "data": (),
    "pretrain": ("kind", "mae", "length_run", "True", "out_dir", "runs/nb/mae"),
    "finetune": ("experiment", "main", "init", "mae", "schedule", "1", "out_dir", "runs/nb/finetune"),
    "complexity": ("out_path", "runs/nb/complexity.json"),
    "report": ("out_dir", "runs/nb/results"),
    "explore": ("inits", "['random', 'mae']"),
}
WRITES = {
    "data": "data/synthetic/annotations",
    "pretrain": "runs/nb/mae/checkpoint.pth",
    "finetune": "runs/nb/finetune/metrics.json",
    "complexity": "runs/nb/complexity.json",
    "report": "runs/nb/results/summary.json",
    "explore": None,
}


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_every_notebook_runs_with_its_kernel_in_notebooks(study_copy: Path, tmp_path: Path) -> None:
    root, before = study_copy, listing(study_copy / "notebooks")
    for name, params in RUNS.items():
        out = tmp_path / f"{name}.ipynb"
        r = papermill(root / "notebooks" / f"{name}.ipynb", out, root / "notebooks", *params)
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        if WRITES[name]:
            assert (root / WRITES[name]).exists(), f"{name}: {WRITES[name]} not written at the root"
    assert listing(root / "notebooks") == before, "a notebook wrote under notebooks/"
    explored = nbformat.read(tmp_path / "explore.ipynb", as_version=4)
    pngs = sum("image/png" in o.get("data", {}) for c in explored.cells if c.cell_type == "code" for o in c.outputs)
    assert pngs >= 5  # curves, predictions, per category, per size, TIDE
    diff = json.dumps(explored.cells[-1].outputs)  # the config diff names both runs: random's first two lengths
    assert "main/random-main-x1-s0" in diff and "main/random-main-x2-s0" in diff


@pytest.mark.slow
def test_a_notebook_saved_with_outputs_leaves_the_study_up_to_date(study_copy: Path) -> None:
    """Execute finetune.ipynb as JupyterLab does (kernel in notebooks/, defaults) and save it through jupytext's
    contents manager (JupyterLab's save): the .py keeps its bytes, `dvc status` stays up to date, and the
    outputs are caught before they reach git."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class
    from nbclient import NotebookClient

    root = study_copy
    dvc = lambda: subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True)  # noqa: E731
    assert "up to date" in dvc().stdout
    script_before = (root / "notebooks/finetune.py").read_bytes()
    written_before = (root / "notebooks/finetune.py").stat().st_mtime_ns
    nb = nbformat.read(root / "notebooks/finetune.ipynb", as_version=4)
    NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}}, timeout=600
    ).execute()
    assert outputs_in(nb)
    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(root))
    manager.save({"type": "notebook", "format": "json", "content": nb}, "notebooks/finetune.ipynb")
    assert outputs_in(nbformat.read(root / "notebooks/finetune.ipynb", as_version=4))
    assert (root / "notebooks/finetune.py").stat().st_mtime_ns > written_before  # the pair was saved too ...
    assert (
        root / "notebooks/finetune.py"
    ).read_bytes() == script_before  # ... with the same code: outputs are not code
    status = dvc()
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    assert (root / "runs/example/metrics.json").is_file()  # the run went to the root's runs/
    assert outputs_in(committed(root, "finetune")) == []
    subprocess.run(["git", "add", "notebooks/finetune.ipynb"], cwd=root, check=True)
    assert outputs_in(committed(root, "finetune")), "staged outputs must be seen by test_no_output_reaches_git"
    r = subprocess.run([sys.executable, "-m", "nbstripout", "notebooks/finetune.ipynb"], cwd=root)
    assert r.returncode == 0 and outputs_in(nbformat.read(root / "notebooks/finetune.ipynb", as_version=4)) == []
