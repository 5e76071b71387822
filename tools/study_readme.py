"""Copy a finished study's tables and figures into docs/study/ and the README (between markers).

    python tools/study_readme.py [--results results] [--docs docs/study] [--readme README.md]

The README shows the embedded-default study as `dvc repro` wrote it: every markdown table of
results/tables/ and every figure of results/figures/ (copied to docs/study/, with summary.json and
the report's CSVs), placed between `<!-- study:begin -->` and `<!-- study:end -->`. Nothing is typed
by hand, so the README cannot drift from the run it quotes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
SECTIONS = [  # (table file stem, heading, figure file stems)
    ("table1_main", "Table 1 — initializations (mean ± std over seeds)", ["table1_main", "predictions"]),
    ("figure2_convergence", "Figure 2 — convergence (box / mask AP vs fine-tuning epochs)", ["figure2_convergence"]),
    ("table2_multiscale", "Table 2 — multi-scale adaptor vs single scale", []),
    ("table3_attention", "Table 3 — attention: windowed, hybrid, global (± activation checkpointing)", []),
    ("table4_positional", "Table 4 — positional information", []),
    ("figure3_pretrain_length", "Figure 3 — MAE pre-training length", ["figure3_pretrain_length"]),
    ("figure4_tide", "Figure 4 — TIDE error analysis (ΔAP when each error type is fixed)", ["figure4_tide"]),
    ("table5_complexity", "Table 5 — complexity (counted on validation images)", []),
    (None, "Training curves (main runs, first seed)", ["training_curves"]),
]


def section(results: Path, docs: Path, readme_dir: Path) -> str:
    parts = []
    for table, heading, figures in SECTIONS:
        parts.append(f"#### {heading}\n")
        if table is not None:
            md = results / "tables" / f"{table}.md"
            if not md.is_file():
                raise FileNotFoundError(f"{md}: missing (run the study's report stage first)")
            parts.append(md.read_text().strip() + "\n")
        for fig in figures:
            png = docs / f"{fig}.png"
            if png.is_file():
                parts.append(f"![{heading}]({Path(os.path.relpath(png, readme_dir)).as_posix()})\n")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--docs", default="docs/study")
    ap.add_argument("--readme", default="README.md")
    a = ap.parse_args()
    results, docs, readme = Path(a.results), Path(a.docs), Path(a.readme)
    docs.mkdir(parents=True, exist_ok=True)
    for src in [*(results / "figures").glob("*.png"), *(results / "tables").glob("*.csv"), results / "summary.json"]:
        shutil.copy2(src, docs / src.name)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {readme} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = section(results, docs, readme.parent)
    readme.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"{readme}: study section written from {results} ({len(list(docs.glob('*.png')))} figures in {docs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
