"""The embedded study's calibration: fine-tuning runs of candidate settings, summarised for the README.

    python benchmarks/calibration.py summarise RUNS_DIR [...] [--out benchmarks/results/calibration_cpu.json]
    python benchmarks/calibration.py readme [--results benchmarks/results/calibration_cpu.json] [--check]

Each run folder is a `python -m studylib.train` run (config.yaml, metrics.json) of one candidate setting:
labelled images (data.num_train_images), iterations, batch, lr, image size, LSJ scale range, initialization,
and for MAE the local pre-training it started from (the `<checkpoint stem>.summary.json` that
`python -m studylib.pretrain` writes beside the file: its steps and final loss). `summarise` groups the runs
by setting and gives, per setting, each init's box AP over seeds and MAE − random paired by seed with its
95% t-interval (the report's `collect.paired_vs_random`). `readme` writes that table between
`<!-- calibration:begin -->` and `<!-- calibration:end -->` of the README. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from studylib.io import atomic_write_json  # noqa: E402
from studylib.report.collect import paired_vs_random  # noqa: E402

BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"
SETTING = ("labelled_images", "iterations", "batch", "lr", "img_size", "lsj")  # what a setting of the search varies


def read(run: Path) -> dict | None:
    """One finished run's setting and result; None for a run without metrics.json (unfinished)."""
    if not (run / "metrics.json").is_file():
        return None
    m, cfg = json.loads((run / "metrics.json").read_text()), yaml.safe_load((run / "config.yaml").read_text())
    ckpt = cfg["init"].get("checkpoint")
    pre = Path(ckpt).with_suffix(".summary.json") if ckpt else None
    pretrain = json.loads(pre.read_text()) if pre and pre.is_file() else {}
    return {
        "run": run.name,
        "init": cfg["init"]["kind"],
        "pretrain_steps": pretrain.get("steps"),
        "pretrain_loss_end": pretrain.get("loss_end"),
        "labelled_images": cfg["data"].get("num_train_images") or cfg["data"]["synthetic"].get("num_train"),
        "iterations": m["train/iterations"],
        "batch": m["train/global_batch"],
        "lr": m["train/lr_eff"],
        "img_size": cfg["data"]["img_size"],
        "lsj": "–".join(f"{x:g}" for x in cfg["data"]["scale_range"]),
        "seed": m["seed"],
        "bbox/AP": m["bbox/AP"],
        "segm/AP": m["segm/AP"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting (the `SETTING` fields, then MAE's pre-training steps): random's and MAE's box AP over
    seeds, and MAE − random paired by seed."""
    settings = []
    keys = sorted({tuple(r[k] for k in SETTING) for r in rows})
    for key in keys:
        here = [r for r in rows if tuple(r[k] for k in SETTING) == key]
        rnd = [r for r in here if r["init"] == "random"]
        for steps in sorted({r["pretrain_steps"] for r in here if r["init"] == "mae"}) or [None]:
            mae = [r for r in here if r["init"] == "mae" and r["pretrain_steps"] == steps]
            pair = paired_vs_random(rnd + mae, "mae")
            settings.append(
                {
                    **dict(zip(SETTING, key)),
                    "mae_pretrain_steps": steps,
                    "random_box_AP": {r["seed"]: r["bbox/AP"] for r in rnd},
                    "mae_box_AP": {r["seed"]: r["bbox/AP"] for r in mae},
                    "mae_minus_random": pair,
                }
            )
    return settings


def table(result: dict) -> str:
    def aps(d: dict) -> str:
        v = [100 * x for x in d.values()]
        if not v:
            return "–"
        spread = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""
        return f"{statistics.fmean(v):.1f}{spread} (n = {len(v)})"

    lines = [
        "| labelled images | iterations | batch | lr | image size | LSJ scales | MAE pre-training steps "
        "| random box AP | MAE box AP | MAE − random, paired (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["settings"]:
        p = s["mae_minus_random"]
        ci = p.get("ci95")
        pair = "–" if p.get("mean") is None else f"{100 * p['mean']:+.1f}"
        if ci:
            pair += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
        pair += f" (seeds {p.get('seeds')})"
        lines.append(
            f"| {s['labelled_images']} | {s['iterations']} | {s['batch']} | {s['lr']:.3g} | {s['img_size']} "
            f"| {s['lsj']} "
            f"| {s['mae_pretrain_steps'] or '–'} "
            f"| {aps(s['random_box_AP'])} | {aps(s['mae_box_AP'])} | {pair} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summarise")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_cpu.json"))
    r = sub.add_parser("readme")
    r.add_argument("--results", default=str(ROOT / "benchmarks/results/calibration_cpu.json"))
    r.add_argument("--readme", default=str(ROOT / "README.md"))
    r.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.cmd == "summarise":
        rows = [x for d in a.dirs for run in sorted(Path(d).iterdir()) if run.is_dir() and (x := read(run))]
        rows = [x for x in rows if x["init"] in ("random", "mae")]  # the headline pair the search is about
        atomic_write_json(a.out, {"benchmark": "calibration", "runs": rows, "settings": summarise(rows)})
        print(f"{a.out}: {len(rows)} runs")
        return 0
    readme = Path(a.readme)
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    new = f"{head}{BEGIN}\n{table(json.loads(Path(a.results).read_text()))}\n{END}{rest.split(END, 1)[1]}"
    if a.check:
        return 0 if new == text else 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
