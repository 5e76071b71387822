"""Collect every run of the study into one dict (results/summary.json): a key per table and figure.

    summary = collect("params.yaml", root=".")

Only the runs the params expect are read (`study.runs`); a missing or incomplete run is an error
naming its folder, never skipped. Values are as the runs wrote them (AP in [0, 1]); `main` and
`tide` hold the mean over seeds with `<key>_std` (population std) and `n_seeds` beside them; each
pre-trained init of `main` has `bbox/AP_vs_random`, its per-seed difference to random (`paired_vs_random`).
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


def changed(params: dict, experiment: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of `keys` (section.key) that `experiment` changes from the baseline."""
    base, exp = config.load(params, "baseline").flat(), config.load(params, experiment).flat()
    return {k: exp[k] for k in keys if exp[k] != base[k]}


def collect(params: str | Path | dict, root: str | Path = ".") -> dict[str, Any]:
    """The summary of the runs under `root` that `params` (a file relative to root, or a dict) expects."""
    root = Path(root)
    p = config.read_params(params if isinstance(params, dict) else root / params)
    s = study.study(p)
    plan = study.runs(p)
    by = {f: {r.name: (r, read_run(root, r)) for r in runs} for f, runs in plan.items()}
    size = s["sizes"][0]
    summary: dict[str, Any] = {"scale": p.get("scale"), "sizes": list(s["sizes"])}

    # Table 1 and Figure 4: mean over seeds per init (per size in main_by_size)
    summary["main_by_size"] = {}
    tide: dict[str, Any] = {}
    for sz in s["sizes"]:
        table = {}
        for init in s["inits"]:
            rows = [m for r, m in by["main"].values() if r.init == init and r.tags["size"] == sz]
            table[init] = {
                **mean_over_seeds([{k: v for k, v in m.items() if k != "tide"} for m in rows]),
                "epochs": rows[0]["epochs"],
            }
            if sz == size and all("tide" in m for m in rows):
                tide[init] = mean_over_seeds([m["tide"] for m in rows])
                tide[init].pop("n_seeds")
        for init in table:
            if init != "random" and "random" in table:
                runs = [m | {"seed": r.seed} for r, m in by["main"].values() if r.tags["size"] == sz]
                table[init]["bbox/AP_vs_random"] = paired_vs_random(runs, init)
        summary["main_by_size"][sz] = table
    summary["main"] = summary["main_by_size"][size]
    summary["tide"] = {
        i: {e: t[e] for e in TIDE_ERRORS if e in t}
        | {f"{e}_std": t[f"{e}_std"] for e in TIDE_ERRORS if f"{e}_std" in t}
        for i, t in tide.items()
    }

    # the seed-0 run of `main` at the first size: every ablation's default row
    first_seed = s["seeds"][0]

    def default(init: str) -> dict[str, Any]:
        return next(
            m for r, m in by["main"].values() if r.init == init and r.tags["size"] == size and r.seed == first_seed
        )

    # Figure 2: {init: {epochs: metrics}}; the 1x point is main's mean over seeds (with its std)
    conv: dict[str, dict[str, Any]] = {}
    for init in s["inits"]:
        conv.setdefault(init, {})[str(summary["main"][init]["epochs"])] = _point(summary["main"][init])
    for r, m in by["convergence"].values():
        conv.setdefault(r.init, {})[str(m["epochs"])] = _point(m)
    summary["convergence"] = {i: dict(sorted(pts.items(), key=lambda kv: float(kv[0]))) for i, pts in conv.items()}

    # Tables 2-4: ablation rows beside their defaults
    multiscale, attention, positional = {}, {}, {}
    for name, (r, m) in by["ablations"].items():
        diff = changed(
            p,
            r.experiment,
            ("model.adaptor", "model.attention", "model.use_checkpoint", "init.abs_pos", "init.rel_pos"),
        )
        if "model.adaptor" in diff:
            multiscale.setdefault(f"{r.init}/multiscale (default)", _row(default(r.init), adaptor="multiscale"))
            multiscale[name] = _row(m, adaptor=diff["model.adaptor"])
        if "model.attention" in diff or "model.use_checkpoint" in diff:
            attention.setdefault(
                f"{r.init}/hybrid (default)", _attention_row(default(r.init), attention="hybrid", checkpointing=False)
            )
            cfg = config.load(p, r.experiment)
            attention[name] = _attention_row(m, attention=cfg.model.attention, checkpointing=cfg.model.use_checkpoint)
        if "init.abs_pos" in diff or "init.rel_pos" in diff:
            d = default(r.init)
            positional.setdefault(
                f"{r.init}/default", _row(d, init=r.init, abs_pos=d.get("abs_pos"), rel_pos=d.get("rel_pos"))
            )
            positional[name] = _row(m, init=r.init, abs_pos=m.get("abs_pos"), rel_pos=m.get("rel_pos"))
    summary["multiscale"], summary["attention"], summary["positional"] = multiscale, attention, positional

    # Figure 3: AP vs MAE pre-training length (the full length is the init stage's MAE)
    full = s["pretrain"].get("mae", {}).get("steps") if not s["checkpoints"].get("mae") else "release"
    lengths = {str(r.tags["steps"]): _point(m) for r, m in by["pretrain_lengths"].values()}
    if "mae" in s["inits"]:
        lengths[str(full)] = _point(default("mae"))
    summary["pretrain_length"] = dict(sorted(lengths.items(), key=lambda kv: _num(kv[0])))

    # Table 5: complexity, with AP where a run of that experiment exists
    complexity = {}
    for name in s["complexity"]["experiments"]:
        c = read_json(root / study.RUN_DIRS["complexity"] / f"{name}.json")
        runs = [
            (r, m)
            for r, m in (*by["main"].values(), *by["ablations"].values())
            if r.experiment == name and m["status"] == "ok"
        ]
        init = "mae" if any(r.init == "mae" for r, _ in runs) else (runs[0][0].init if runs else None)
        ap = [m for r, m in runs if r.init == init]  # the paper's Table 5: ViTs with MAE, CNNs from scratch
        c["init"] = init
        c["bbox/AP"] = statistics.fmean(m["bbox/AP"] for m in ap) if ap else None
        c["segm/AP"] = statistics.fmean(m["segm/AP"] for m in ap) if ap else None
        complexity[name] = c
    summary["complexity"] = complexity
    return {k: summary[k] for k in ("scale", "sizes", *KEYS, "main_by_size")}


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
