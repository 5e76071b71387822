"""The install surface: pyproject.toml and environment.yml name the same packages; the CI script is sane."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = [p for p in pip if not p.startswith("-e")]
    assert {_name(r): r.replace(" ", "") for r in listed} == {_name(r): r.replace(" ", "") for r in wanted}
    assert "python=3.11" in env["dependencies"]
    assert any(p.startswith("-e .[dev]") for p in pip)


def test_torch_pins_are_the_local_releases():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_ci_script_installs_with_readme_command_and_fails_on_no_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    test_sh = (ROOT / "test.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash test.sh" in readme and "exec bash test.sh" in ci  # CI runs the README's test command
    assert 'pip install -q --disable-pip-version-check -e ".[dev]"' in test_sh and "-m pytest" in test_sh
    assert '"$rc" -eq 5' in test_sh  # pytest's "no tests collected" is a failure


def test_study_sh_names_an_argument_it_does_not_know_before_installing_anything():
    r = subprocess.run(["bash", "study.sh", "--job", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument --job" in r.stderr and "installing" not in r.stdout
    assert "--install-only" in r.stderr  # the usage names both options


def test_package_imports_and_exposes_the_public_api():
    import studylib

    for name in ("build_backbone", "ViT", "load_pretrained", "PRESETS"):
        assert hasattr(studylib, name), name


def test_importing_the_package_leaves_torch_to_what_needs_it():
    """`import studylib` (what `python -m studylib.notebook`, DVC's stage runner, pays per stage) loads no torch;
    the public names load it on first use."""
    code = "import sys, studylib; a = 'torch' in sys.modules; studylib.ViT; print(a, 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


def test_dvc_reads_its_yaml_with_the_c_parser():
    """DVC loads dvc.yaml and dvc.lock with ruamel's safe loader once per stage: the install gives it the C parser
    (ruamel.yaml.clib), 3x faster on the study's dvc.lock than the pure-Python one, and the same data."""
    from dvc.utils.serialize import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None and YAML(typ="safe").Parser is CParser
    text = (ROOT / "dvc.yaml").read_text()
    assert parse_yaml(text, "dvc.yaml") == YAML(typ="safe", pure=True).load(text)
