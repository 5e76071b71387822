"""What notebooks/explore.ipynb reads from a finished study: nothing here trains or writes.

table = runs("params.yaml")                        # every study run with a metrics.json
chosen = select(table, inits=["mae"], seeds=[0])   # by initialization / experiment / seed
curves(chosen)                                     # dvclive's logs, long format
per_category(chosen), per_size(chosen), tide(chosen), config_diff(a, b)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from .. import config
from . import study

AREAS = {"small": "APs", "medium": "APm", "large": "APl"}


def runs(params: str | Path | dict, root: str | Path = ".") -> pd.DataFrame:
    """One row per study run whose folder holds metrics.json: family, name, experiment, init, seed, epochs, run
    (its folder), and box / mask AP. Runs not finished yet are left out (the study may still be running)."""
    rows = []
    for family, items in study.runs(params).items():
        for r in items:
            path = Path(root) / r.out_dir / "metrics.json"
            if path.is_file():
                m = json.loads(path.read_text())
                rows.append(
                    {
                        "family": family,
                        "name": r.name,
                        "experiment": r.experiment,
                        "init": r.init,
                        "seed": m.get("seed", r.seed),
                        "epochs": r.epochs,
                        "run": r.out_dir,
                        "bbox/AP": m.get("bbox/AP"),
                        "segm/AP": m.get("segm/AP"),
                    }
                )
    if not rows:
        raise ValueError(f"{Path(root).resolve()}: no study run has a metrics.json yet (dvc repro writes them)")
    return pd.DataFrame(rows)


def select(
    table: pd.DataFrame,
    inits: Sequence[str] = (),
    experiments: Sequence[str] = (),
    seeds: Sequence[int] = (),
    families: Sequence[str] = (),
) -> pd.DataFrame:
    """The rows of `table` matching every non-empty list; a value no run has is an error naming the ones there."""
    keep = pd.Series(True, index=table.index)
    for column, wanted in (("init", inits), ("experiment", experiments), ("seed", seeds), ("family", families)):
        if not wanted:
            continue
        present = sorted(table[column].dropna().unique().tolist(), key=str)
        unknown = [w for w in wanted if w not in present]
        if unknown:
            raise ValueError(
                f"{column} {', '.join(map(str, unknown))}: no finished run; {config.closest(unknown[0], present)}"
            )
        keep &= table[column].isin(list(wanted))
    if not keep.any():
        raise ValueError(
            f"no finished run is all of inits={list(inits)}, experiments={list(experiments)}, "
            f"seeds={list(seeds)}, families={list(families)}"
        )
    return table[keep].reset_index(drop=True)


def short(run: str | Path) -> str:
    """A run's name in legends: its folder under runs/."""
    return str(run).removeprefix("runs/")


def run_config(run: str | Path) -> config.ExperimentConfig:
    """The resolved config a run saved (config.yaml)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{path} is missing: not a finished run folder")
    return config.from_dict(yaml.safe_load(path.read_text()))


def results(run: str | Path, iou_type: str = "segm") -> list[dict]:
    """The COCO results file a run's evaluation wrote (coco_results_<iou_type>.json)."""
    path = Path(run) / f"coco_results_{iou_type}.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the run has not been evaluated")
    return json.loads(path.read_text())


def curves(chosen: pd.DataFrame, metrics: Sequence[str] = ("train/loss", "train/lr")) -> pd.DataFrame:
    """dvclive's logs of the chosen runs (dvclive/plots/metrics/<metric>.tsv) as rows run, metric, step, value."""
    frames = []
    for _, row in chosen.iterrows():
        for metric in metrics:
            tsv = Path(row["run"]) / "dvclive" / "plots" / "metrics" / f"{metric}.tsv"
            if not tsv.is_file():
                raise ValueError(f"{tsv} is missing: the run logged no {metric} with dvclive")
            df = pd.read_csv(tsv, sep="\t")
            value = df.columns[-1]
            frames.append(
                pd.DataFrame({"run": short(row["run"]), "metric": metric, "step": df["step"], "value": df[value]})
            )
    return pd.concat(frames, ignore_index=True)


def per_category(chosen: pd.DataFrame, iou_type: str = "bbox") -> pd.DataFrame:
    """AP per category of each chosen run (rows: category, columns: runs), from its COCO results file and
    the same validation ground truth its evaluation used; categories without a validation instance are left out."""
    from ..engine.build import base_dataset, build_datasets
    from ..engine.inference import gt_subset
    from ..evaluation import per_category_ap

    columns = {}
    for _, row in chosen.iterrows():
        _, val = build_datasets(run_config(row["run"]))
        base = base_dataset(val)
        ids = [base.image_ids[i] for i in val.indices] if hasattr(val, "indices") else list(base.image_ids)
        columns[short(row["run"])] = per_category_ap(gt_subset(base.coco, ids), results(row["run"], iou_type), iou_type)
    table = pd.DataFrame(columns).rename_axis("category")
    return table[(table >= 0).any(axis=1)]  # -1: no instance of the category in the validation images


def per_size(chosen: pd.DataFrame) -> pd.DataFrame:
    """AP on small / medium / large objects (box and mask) of each chosen run, as its metrics.json holds them
    (-1: no object of that size in the validation set, COCOeval's convention) in rows run, type, size, AP."""
    rows = []
    for _, row in chosen.iterrows():
        m = json.loads((Path(row["run"]) / "metrics.json").read_text())
        for iou_type in ("bbox", "segm"):
            for size, key in AREAS.items():
                rows.append(
                    {"run": short(row["run"]), "type": iou_type, "size": size, "AP": m.get(f"{iou_type}/{key}")}
                )
    return pd.DataFrame(rows)


def tide(chosen: pd.DataFrame) -> pd.DataFrame:
    """TIDE's ΔAP per error type of each chosen run (its tide.json) in rows run, error, dAP."""
    rows = []
    for _, row in chosen.iterrows():
        path = Path(row["run"]) / "tide.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: the run was evaluated without TIDE (eval.tide: false)")
        rows += [{"run": short(row["run"]), "error": k, "dAP": v} for k, v in json.loads(path.read_text()).items()]
    return pd.DataFrame(rows)


def config_diff(run_a: str | Path, run_b: str | Path) -> pd.DataFrame:
    """The keys where two runs' resolved configs (config.yaml) differ: key, then each run's value."""
    a, b = run_config(run_a).flat(), run_config(run_b).flat()
    keys = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
    return pd.DataFrame(
        {
            "key": sorted(keys),
            str(run_a): [a.get(k) for k in sorted(keys)],
            str(run_b): [b.get(k) for k in sorted(keys)],
        }
    ).set_index("key")
