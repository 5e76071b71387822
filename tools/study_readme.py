"""Copy a finished study's tables and figures into docs/study/ and the README (between markers).

    python tools/study_readme.py [--results results] [--docs docs/study] [--readme README.md]

The README shows the embedded-default study as `dvc repro` wrote it: every markdown table of
results/tables/ and every figure of results/figures/ (copied to docs/study/, with summary.json and
the report's CSVs), placed between `<!-- study:begin -->` and `<!-- study:end -->`. Nothing is typed
by hand, so the README cannot drift from the run it quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studylib.config import init_order  # noqa: E402
from studylib.report.collect import epochs_to_reach  # noqa: E402

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
SECTIONS = [  # (table file stem, heading, figure file stems)
    (
        "table1_main",
        "Table 1 — initializations: best schedule, every schedule, paired vs random",
        ["table1_main", "predictions"],
    ),
    ("figure2_convergence", "Figure 2 — convergence (box / mask AP vs fine-tuning epochs)", ["figure2_convergence"]),
    ("table2_multiscale", "Table 2 — multi-scale adaptor vs single scale", []),
    ("table3_attention", "Table 3 — attention: windowed, hybrid, global (± activation checkpointing)", []),
    ("table4_positional", "Table 4 — positional information", []),
    ("figure3_pretrain_length", "Figure 3 — MAE pre-training length", ["figure3_pretrain_length"]),
    ("figure4_tide", "Figure 4 — TIDE error analysis (ΔAP when each error type is fixed)", ["figure4_tide"]),
    ("table5_complexity", "Table 5 — complexity (counted on validation images)", []),
    (None, "Training curves (each init's run at Table 1's paired length, first seed)", ["training_curves"]),
]


def findings(summary: dict) -> str:
    """The headline findings, worded from summary.json's numbers (Table 1's best schedules, the paired
    differences to random with their verdict, Figure 2's length each init needs to reach MAE's best)."""
    main, conv = summary["main"], summary["convergence"]
    lines = ["#### Findings (worded from `summary.json` by `tools/study_readme.py`)\n"]
    best = ", ".join(
        f"{i} {100 * m['bbox/AP']:.1f} ± {100 * m.get('bbox/AP_std', 0):.1f} at {m['epochs']:g} epochs"
        for i, m in ((i, main[i]) for i in init_order(main))
    )
    lines.append(f"- **Table 1, each initialization's best schedule** (box AP, mean ± std over seeds): {best}.")
    for init in init_order(main):
        p = main[init].get("bbox/AP_vs_random")
        if not p or p.get("mean") is None:
            continue
        ci = p.get("ci95")
        if ci:
            verdict = "beats random" if ci[0] > 0 else "below random" if ci[1] < 0 else "not separable from random"
            span = f" (95% CI [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}])"
        else:
            verdict, span = "one seed, no interval", ""
        lines.append(
            f"- **{init} − random at {p['epochs']:g} epochs, paired by seed** (n = {len(p['seeds'])}): "
            f"{100 * p['mean']:+.1f} box AP{span}: **{verdict}**."
        )
    if "mae" in conv:
        top, at = epochs_to_reach(conv, "mae")
        reach = [
            f"{i} {at[i]:g}" if at[i] is not None else f"{i} not within its {max(map(float, conv[i])):g}"
            for i in init_order(conv)
        ]
        lines.append(f"- **Figure 2: epochs to reach MAE's best mean ({100 * top:.1f} box AP)**: {', '.join(reach)}.")
    return "\n".join(lines) + "\n"


def cost(bench: dict) -> str:
    """The study's cost and #14's targets, worded from benchmarks/results/study_cpu.json."""
    t = bench["targets"]
    fam = ", ".join(f"{k} {v / 60:.1f}" for k, v in bench["seconds_by_family"].items())
    return (
        f"- **Cost** (`benchmarks/results/study_cpu.json`, commit `{bench.get('measured_at_commit')}`, "
        f"{bench['machine']['cpus']} cores): {t['total_min']:.1f} min from a fresh clone with install "
        f"(`python -m studylib.repro --jobs {bench['jobs']}`, {bench['stages']} stages; install "
        f"{bench['install_s'] or 0:.0f} s); plain `dvc repro` (the stages one after another, their summed time) "
        f"{t['plain_dvc_repro_min_estimate']:.1f} min. Minutes of stage time by family: {fam}. Targets: "
        + ", ".join(f"{k} {v}" for k, v in t.items() if isinstance(v, bool))
        + ".\n"
    )


def section(results: Path, docs: Path, readme_dir: Path, bench: Path | None = None) -> str:
    parts = [findings(json.loads((results / "summary.json").read_text()))]
    if bench is not None and bench.is_file():
        parts[0] += cost(json.loads(bench.read_text()))
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
    ap.add_argument("--bench", help="benchmarks/results/study_cpu.json of the same run: its cost, worded")
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
    body = section(results, docs, readme.parent, Path(a.bench) if a.bench else None)
    readme.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"{readme}: study section written from {results} ({len(list(docs.glob('*.png')))} figures in {docs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
