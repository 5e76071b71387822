"""`python -m studylib.report.offline_plots`: DVC's plots page with Vega inlined, no network scripts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from studylib.report import offline_plots

vl_convert = pytest.importorskip("vl_convert")


def project(root: Path) -> Path:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    for run, slope in (("a", 1.0), ("b", 0.5)):
        d = root / f"runs/{run}/dvclive/plots/metrics/train"
        d.mkdir(parents=True)
        rows = "\n".join(f"{i}\t{2.0 - slope * i / 10:.3f}" for i in range(10))
        (d / "loss.tsv").write_text(f"step\tloss\n{rows}\n")
    (root / "dvc.yaml").write_text(
        "plots:\n  - runs/a/dvclive/plots/metrics/train/loss.tsv:\n      x: step\n"
        "      y: loss\n  - runs/b/dvclive/plots/metrics/train/loss.tsv:\n"
        "      x: step\n      y: loss\n"
    )
    return root


def test_external_scripts_are_found() -> None:
    page = '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script><script>var x = "https://a";</script>'
    assert len(offline_plots.external_scripts(page)) == 1
    assert offline_plots.external_scripts("<script src='//cdn.x/y.js'></script>")
    assert not offline_plots.external_scripts('<script type="text/javascript">vegaEmbed("#a", {})</script>')


@pytest.mark.slow
def test_plots_page_works_offline(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    # DVC's own page needs the network ...
    subprocess.run(["dvc", "plots", "show", "-o", "online"], cwd=root, check=True, capture_output=True)
    assert offline_plots.external_scripts((root / "online/index.html").read_text())
    # ... ours does not, and still draws every plot with the inlined vegaEmbed
    assert offline_plots.run("show", ["-o", "offline"], root) == 0
    page = (root / "offline/index.html").read_text()
    assert offline_plots.external_scripts(page) == []
    assert "window.vegaEmbed=" in page and page.count("vegaEmbed('#") == 2
    # the specs DVC writes render with the bundled Vega-Lite (vl-convert runs the same libraries)
    r = subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, check=True, capture_output=True, text=True)
    specs = [p["content"] for plots in json.loads(r.stdout)["data"].values() for p in plots if p["type"] == "vega"]
    assert len(specs) == 2
    for spec in specs:
        assert "<svg" in vl_convert.vegalite_to_svg(spec)


def test_unknown_command_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'shwo'; expected show or diff"):
        offline_plots.run("shwo", [], tmp_path)
