"""`dvc plots show` / `dvc plots diff` as a page that opens without internet access.

    python -m studylib.report.offline_plots show [ARGS of dvc plots show ...]
    python -m studylib.report.offline_plots diff [ARGS of dvc plots diff ...]

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN (dvc_render's `VegaRenderer.SCRIPTS`,
put where an HTML template has `{scripts}`). This module writes a template without `{scripts}`
that inlines instead the bundle vl-convert ships (`vl_convert.javascript_bundle()`: the three
libraries and their dependencies, defining `window.vegaEmbed`), then runs `dvc plots ... --html-template`.
DVC has no offline switch, hence these few lines. The training curves dvclive logs for every run
(`runs/*/*/dvclive/plots/metrics/...`) compare across runs this way; the report also draws them
with seaborn (results/figures/training_curves.png).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from ..io import atomic_write_text

TEMPLATE = ".dvc/tmp/offline_plots.html"
EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <script type="text/javascript">
BUNDLE
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script (from the vl-convert wheel; no network)."""
    import vl_convert

    return vl_convert.javascript_bundle()


def write_template(path: str | Path = TEMPLATE) -> Path:
    """An HTML template for `dvc plots --html-template` with the Vega libraries inlined."""
    js = bundle()
    if "{plot_divs}" in js or "{scripts}" in js:  # DVC fills placeholders with str.replace
        raise RuntimeError("the Vega bundle contains a DVC template placeholder; cannot inline it")
    path = Path(path)
    atomic_write_text(path, PAGE.replace("BUNDLE", js.replace("</script", "<\\/script")))
    return path


def external_scripts(html: str) -> list[str]:
    """`<script src=...>` tags of `html` that point at another host."""
    return [m.group(0) for m in EXTERNAL_SCRIPT.finditer(html)]


def run(command: str, args: list[str], root: str | Path = ".") -> int:
    """`dvc plots COMMAND ARGS --html-template <offline template>`; checks the page it writes."""
    if command not in ("show", "diff"):
        raise ValueError(f"command = {command!r}; expected show or diff")
    root = Path(root)
    template = write_template(root / TEMPLATE)
    out_dir = "dvc_plots"
    for i, a in enumerate(args):
        if a in ("-o", "--out") and i + 1 < len(args):
            out_dir = args[i + 1]
        elif a.startswith("--out="):
            out_dir = a.split("=", 1)[1]
    r = subprocess.run(["dvc", "plots", command, *args, "--html-template", str(template.resolve())], cwd=root)
    if r.returncode != 0:
        return r.returncode
    page = root / out_dir / "index.html"
    if page.exists():
        bad = external_scripts(page.read_text())
        if bad:
            print(f"error: {page} still loads scripts from the network: {bad[:3]}", file=sys.stderr)
            return 1
        print(f"offline page: {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studylib.report.offline_plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("show", "diff"))
    ap.add_argument("args", nargs=argparse.REMAINDER, help="passed to dvc plots show / diff")
    a = ap.parse_args(argv)
    return run(a.command, a.args)


if __name__ == "__main__":
    sys.exit(main())
