"""Collect every run of the study into one dict (results/summary.json): a key per table and figure.

    summary = collect("params.yaml", root=".")

Only the runs the params expect are read (`study.runs`); a missing or incomplete run is an error
naming its folder, never skipped. Values are as the runs wrote them (AP in [0, 1]).

- `main[init]` (Table 1): the mean over seeds of the init's best schedule (`epochs`: which, the paper's
  rule), `<key>_std` (population std), `n_seeds`, `schedules` (every length's mean box AP) and
  `bbox/AP_vs_random` = {mean, ci95, seeds, epochs}: the per-seed difference to random at
  study.paired.epochs, where every init has runs of equal length (`paired_vs_random`).
- `convergence[init][epochs]` (Figure 2): {bbox/AP, bbox/AP_std, segm/AP, seeds, ...} on the sweep's grid.
- `tide` (Figure 4): TIDE of each init's Table 1 runs. `*_by_size`: the same per size experiment.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from .. import config
from . import study

KEYS = ("main", "convergence", "multiscale", "attention", "positional", "pretrain_length", "tide", "complexity")
TIDE_ERRORS = ("cls", "loc", "both", "dupe", "bkg", "miss")
REPORTED = (
    "bbox/AP",
    "bbox/AP50",
    "bbox/AP75",
    "bbox/APs",
    "bbox/APm",
    "bbox/APl",
    "segm/AP",
    "segm/AP50",
    "segm/AP75",
    "train/time_s",
    "train/iter_time_s",
    "train/peak_mem_gb",
    "infer/time_per_image_s",
)
TABLE3_FACTS = {  # metrics.json key -> the attention row's key (also kept for an OOM run)
    "train/images_per_gpu": "images_per_gpu",
    "train/attention_kernel": "attention_kernel",
    "train/peak_mem_meaning": "peak_mem_meaning",
}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: run its stage first (dvc repro)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_run(root: Path, run: study.Run) -> dict[str, Any]:
    """metrics.json of a run with its resolved epochs, positions and status (`ok` or `oom`)."""
    d = root / run.out_dir
    metrics = read_json(d / "metrics.json")
    status = metrics.get("status", "ok")
    out: dict[str, Any] = {"status": status, "run": run.out_dir, "experiment": run.experiment, "init": run.init}
    if status == "ok":  # NaN (e.g. no timed iteration in a very short run) is not JSON: null
        out.update({k: None if metrics[k] != metrics[k] else metrics[k] for k in REPORTED if k in metrics})
        out["n_parameters"] = metrics.get("n_parameters")
    out["facts"] = {k: metrics[k] for k in TABLE3_FACTS if k in metrics}
    cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    out["epochs"] = cfg.get("train", {}).get("epochs")
    if (d / "load_report.json").is_file():
        report = read_json(d / "load_report.json")
        out["abs_pos"], out["rel_pos"] = report["abs_pos"], report["rel_pos"]
    if (d / "tide.json").is_file():
        out["tide"] = read_json(d / "tide.json")
    return out


def mean_over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric key over `rows`, with `<key>_std` and `n_seeds`."""
    out: dict[str, Any] = {"n_seeds": len(rows)}
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        elif key in REPORTED and any(v is None for v in values):
            out[key] = None  # not measured in some seed (e.g. NaN iteration time of a very short run)
    return out


def paired_vs_random(runs: list[dict[str, Any]], init: str, key: str = "bbox/AP") -> dict[str, Any]:
    """`init` minus random per seed (same seed, same size): {"mean", "ci95": [lo, hi] (Student t; null under 2
    seeds), "seeds": the seeds paired}. Seeds where either run has no value (OOM, not measured) are left out."""
    from scipy import stats

    def by_seed(name: str) -> dict[int, float]:
        return {m["seed"]: m[key] for m in runs if m["init"] == name and m.get(key) is not None}

    ours, ref = by_seed(init), by_seed("random")
    seeds = sorted(set(ours) & set(ref))
    d = [ours[s] - ref[s] for s in seeds]
    if not d:
        return {"mean": None, "ci95": None, "seeds": []}
    mean = statistics.fmean(d)
    if len(d) < 2:
        return {"mean": mean, "ci95": None, "seeds": seeds}
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": seeds}


def ekey(epochs: float) -> str:
    """summary.json's key of a fine-tuning length: 8.0 -> "8", 0.5 -> "0.5"."""
    return f"{float(epochs):g}"


def _ap(m: dict[str, Any]) -> float:
    v = m.get("bbox/AP")
    return float("-inf") if v is None else v


def seed_mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`mean_over_seeds` of runs' metrics, leaving out their per-run TIDE dicts."""
    return mean_over_seeds([{k: v for k, v in m.items() if k != "tide"} for m in rows])


def epochs_to_reach(conv: dict[str, dict[str, Any]], ref: str) -> tuple[float, dict[str, float | None]]:
    """Figure 2's question: `ref`'s best mean box AP, and per init the shortest length reaching it (None: never)."""
    best = max(p["bbox/AP"] for p in conv[ref].values() if p.get("bbox/AP") is not None)
    out = {}
    for init, points in conv.items():
        hit = [float(e) for e, p in points.items() if p.get("bbox/AP") is not None and p["bbox/AP"] >= best]
        out[init] = min(hit) if hit else None
    return best, out


def sweep_points(rows: list[tuple[study.Run, dict[str, Any]]]) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """{init: {epochs: [metrics with seed, ...]}} of Table 1's runs (the sweep's and the paired ones)."""
    out: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for r, m in rows:
        out.setdefault(r.init, {}).setdefault(r.epochs, []).append(m | {"seed": r.seed})
    return out


def convergence_point(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure 2's point: mean over seeds of box and mask AP, with the spread and the seeds."""
    ok = [m for m in rows if m.get("bbox/AP") is not None]
    point = _point(seed_mean(ok)) if ok else {}
    point.setdefault("bbox/AP", None)
    point.setdefault("bbox/AP_std", None)
    point.setdefault("segm/AP", None)
    return point | {"seeds": sorted(m["seed"] for m in ok), "n_seeds": len(ok)}


def best_schedule(points: dict[float, list[dict[str, Any]]]) -> tuple[float, dict[str, Any]]:
    """The paper's Table 1 rule: the schedule with the highest mean box AP, and that mean's row."""
    means = {e: seed_mean(rows) for e, rows in points.items()}
    best = max(sorted(means), key=lambda e: _ap(means[e]))
    return best, means[best]


def table1(points: dict[str, dict[float, list[dict[str, Any]]]], inits: list[str], paired_epochs: float) -> dict:
    """Table 1 of one size: per init its best schedule's mean (`epochs`: which), every schedule's box AP,
    and the paired difference to random at `paired_epochs` (`bbox/AP_vs_random`, with its `epochs`)."""
    table = {}
    for init in inits:
        best, row = best_schedule(points[init])
        table[init] = {
            **row,
            "epochs": best,
            "schedules": {ekey(e): mean_over_seeds(rows).get("bbox/AP") for e, rows in sorted(points[init].items())},
        }
    at = float(paired_epochs)
    pairs = [m | {"init": i} for i in inits for m in points[i].get(at, [])]
    for init in inits:
        if init != "random" and "random" in points:
            table[init]["bbox/AP_vs_random"] = paired_vs_random(pairs, init) | {"epochs": at}
    return table


def collect(params: str | Path | dict, root: str | Path = ".") -> dict[str, Any]:
    """The summary of the runs under `root` that `params` (a file relative to root, or a dict) expects."""
    root = Path(root)
    p = config.read_params(params if isinstance(params, dict) else root / params)
    s = study.study(p)
    plan = study.runs(p)
    by = {f: {r.out_dir: (r, read_run(root, r)) for r in runs} for f, runs in plan.items()}
    size = s["sizes"][0]
    summary: dict[str, Any] = {"scale": p.get("scale"), "sizes": list(s["sizes"])}

    # Table 1, Figure 2 and Figure 4, per size: the sweep (and the paired seeds) by init and length
    summary["main_by_size"], summary["convergence_by_size"], tide = {}, {}, {}
    for sz in s["sizes"]:
        rows = [(r, m) for r, m in (*by["main"].values(), *by["paired"].values()) if r.size == sz]
        points = sweep_points(rows)
        summary["main_by_size"][sz] = table1(points, s["inits"], s["paired"]["epochs"])
        summary["convergence_by_size"][sz] = {
            init: {ekey(e): convergence_point(points[init][e]) for e in sorted(points[init])} for init in s["inits"]
        }
        if sz == size:  # Figure 4: TIDE of each init's Table 1 runs (its best schedule)
            for init in s["inits"]:
                best = [m["tide"] for m in points[init][summary["main_by_size"][sz][init]["epochs"]] if "tide" in m]
                if best:
                    tide[init] = mean_over_seeds(best)
                    tide[init].pop("n_seeds")
    summary["main"] = summary["main_by_size"][size]
    summary["convergence"] = summary["convergence_by_size"][size]
    summary["tide"] = {
        i: {e: t[e] for e in TIDE_ERRORS if e in t}
        | {f"{e}_std": t[f"{e}_std"] for e in TIDE_ERRORS if f"{e}_std" in t}
        for i, t in tide.items()
    }

    def default(init: str, sz: str, epochs: float) -> dict[str, Any]:
        """The ablations' default row: the sweep run of `init` at `sz` and `epochs`, first seed."""
        return by["main"][study.sweep_run(p, init, sz, epochs).out_dir][1]

    def label(r: study.Run, text: str) -> str:
        return f"{r.init}/{text}" if r.size == size else f"{r.size}/{r.init}/{text}"

    # Tables 2-4: ablation rows beside their defaults (same init, size and length)
    multiscale, attention, positional = {}, {}, {}
    for name, (r, m) in ((r.name, (r, m)) for r, m in by["ablations"].values()):
        cfg = config.load(p, r.experiment)
        at = {"size": r.size, "epochs": r.epochs}
        if "table2" in r.tables:
            d = default(r.init, r.size, r.epochs)
            multiscale.setdefault(label(r, "multiscale (default)"), _row(d, adaptor="multiscale", **at))
            multiscale[name] = _row(m, adaptor=cfg.model.adaptor, **at)
        if "table3" in r.tables:
            d = default(r.init, r.size, r.epochs)
            attention.setdefault(
                label(r, "hybrid (default)"), _attention_row(d, attention="hybrid", checkpointing=False, **at)
            )
            attention[name] = _attention_row(
                m, attention=cfg.model.attention, checkpointing=cfg.model.use_checkpoint, **at
            )
        if "table4" in r.tables:
            d = default(r.init, r.size, r.epochs)
            positional.setdefault(
                label(r, "default"), _row(d, init=r.init, abs_pos=d.get("abs_pos"), rel_pos=d.get("rel_pos"), **at)
            )
            positional[name] = _row(m, init=r.init, abs_pos=m.get("abs_pos"), rel_pos=m.get("rel_pos"), **at)
            if r.checkpoint:
                positional[name]["checkpoint"] = r.checkpoint
    summary["multiscale"], summary["attention"], summary["positional"] = multiscale, attention, positional

    # Figure 3: AP vs MAE pre-training length (the full length is the sweep's MAE run at the same size and length)
    full = s["pretrain"].get("mae", {}).get("steps") if not s["checkpoints"].get("mae") else "release"
    lengths = {str(r.tags["steps"]): _point(m) for r, m in by["pretrain_lengths"].values()}
    if by["pretrain_lengths"]:
        r0 = next(iter(by["pretrain_lengths"].values()))[0]
        lengths[str(full)] = _point(default("mae", r0.size, r0.epochs))
    summary["pretrain_length"] = dict(sorted(lengths.items(), key=lambda kv: _num(kv[0])))

    # Table 5: complexity, with the AP of the trained run it was counted on (study.complexity.weights)
    complexity = {}
    weights = s["complexity"].get("weights") or {}
    runs_by_dir = {d: rm for fam in by.values() for d, rm in fam.items()}
    for name in [*weights, *s["complexity"]["experiments"]]:
        c = read_json(root / study.RUN_DIRS["complexity"] / f"{name}.json")
        r, m = runs_by_dir.get(weights.get(name), (None, {}))
        c["init"] = r.init if r else None
        c["weights_run"] = r.out_dir if r else None
        c["bbox/AP"], c["segm/AP"] = m.get("bbox/AP"), m.get("segm/AP")
        complexity[name] = c
    summary["complexity"] = complexity
    return {k: summary[k] for k in ("scale", "sizes", *KEYS, "main_by_size", "convergence_by_size")}


def _point(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "bbox/AP", "segm/AP", "bbox/AP50", "segm/AP50", "epochs", "n_seeds")
    return {k: m[k] for k in keys + tuple(f"{k}_std" for k in keys) if k in m}


def _row(m: dict[str, Any], **fields: Any) -> dict[str, Any]:
    keep = (
        "status",
        "bbox/AP",
        "segm/AP",
        "train/time_s",
        "train/iter_time_s",
        "train/peak_mem_gb",
        "infer/time_per_image_s",
        "run",
    )
    return {**fields, **{k: m[k] for k in keep if k in m}}


def _attention_row(m: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Table 3's row: `_row` with the images per GPU and the attention kernel the run wrote (None before them)."""
    facts = m.get("facts", {})
    return _row(m, **fields) | {row_key: facts.get(key) for key, row_key in TABLE3_FACTS.items()}


def _num(x: str) -> float:
    try:
        return float(x)
    except ValueError:
        return float("inf")


def write(summary: dict[str, Any], path: str | Path) -> Path:
    from ..io import atomic_write_json

    return atomic_write_json(path, summary)
