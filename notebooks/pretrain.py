# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Initialization
# One of the five initializations: a release file named in params.yaml (`study.checkpoints`), copied and inspected, or pre-trained locally (the embedded default). `random` writes a marker only.

# %%
import json
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from studylib import config, launch, pretrain
from studylib.checkpoints import load_pretrained
from studylib.engine.build import backbone_kwargs, data_paths
from studylib.io import atomic_write_json, project_root
from studylib.models import build_backbone
from studylib.pretrain.config import ENCODER_KEYS
from studylib.report import figures, study

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
kind = ""  # "": the baseline's init.kind; else random | supervised | mocov3 | beit | mae | yours (studylib.inits)
out_dir = ""  # "": inits/<kind>
steps = -1  # -1: study.pretrain.<kind>.steps
checkpoint = ""  # a release file for the scale's backbone; "": study.checkpoints.<kind>
length_run = False  # Figure 3: pre-train (or take `checkpoint`) into out_dir, ignore study.checkpoints

# %%
kind = kind or config.load(params_file, "baseline").init.kind
out_dir = out_dir or f"inits/{kind}"
s = study.study(params_file)
base = config.load(params_file, "baseline", study.init_sets(params_file, kind, Path(out_dir) / "checkpoint.pth"))
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
if kind == "random":
    targets, releases = {}, {}
elif length_run:  # Figure 3: one file for the scale's backbone, pre-trained here unless `checkpoint`
    targets = {base.model.backbone: str(out / "checkpoint.pth")}
    releases = {base.model.backbone: checkpoint} if checkpoint else {}
else:  # inits/<kind>/checkpoint.pth for the scale's backbone, inits/<kind>/<backbone>/ for other sizes
    targets = {
        config.load(params_file, e).model.backbone: study.init_checkpoint(params_file, kind, e) for e in s["sizes"]
    }
    targets[base.model.backbone] = str(out / "checkpoint.pth")
    releases = {base.model.backbone: checkpoint} if checkpoint else study.release_files(params_file, kind)
print("resolved:", json.dumps({"kind": kind, "out_dir": out_dir, "releases": releases}))
targets

# %%
if kind == "random":
    atomic_write_json(
        out / "random.json",
        {
            "kind": "random",
            "note": "no checkpoint: the fine-tuning run initializes the ViT (trunc-normal 0.02, BEiT rescaling) and positions by the paper's rule",
        },
    )
for backbone, target in targets.items():
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if backbone in releases:
        src = Path(releases[backbone])
        if not src.is_file():
            raise ValueError(f"study.checkpoints.{kind}: {src} does not exist")
        target.unlink(missing_ok=True)
        try:
            os.link(src, target)  # a hard link: no copy of a large release file
        except OSError:
            shutil.copy2(src, target)
    elif backbone == base.model.backbone:
        cfg_kw = {**s["pretrain"].get("all", {}), **s["pretrain"].get(kind, {})}
        if steps > 0:
            cfg_kw["steps"] = steps
        print("resolved:", json.dumps({"kind": kind, "out_dir": out_dir, "steps": cfg_kw.get("steps")}))
        overrides = {k: v for k, v in base.model.overrides.items() if k in ENCODER_KEYS}
        pcfg = pretrain.PretrainConfig(backbone=backbone, overrides=overrides, **cfg_kw)
        paths = data_paths(base)
        root = Path(base.data.root)
        images = paths["train_images"] if kind == "supervised" or base.data.kind == "coco" else root / "unlabeled"
        ann = paths["train_ann"] if kind == "supervised" else None
        summary = launch.pretrain(study.PRETRAIN_METHOD[kind], images, target, pcfg, ann_file=ann)  # $STUDYLIB_LAUNCHER
        print(json.dumps(summary, indent=1, default=str))
    else:
        raise ValueError(
            f"init {kind!r} for {backbone}: name a release file in study.checkpoints.{kind} "
            f"(local pre-training is for the scale's backbone {base.model.backbone} only)"
        )

# %%
reports = {}
for backbone, target in targets.items():
    cfg = (
        base
        if backbone == base.model.backbone
        else config.load(params_file, "baseline", [f"model.backbone={backbone}"])
    )
    vit = build_backbone(backbone, **backbone_kwargs(cfg))
    report = load_pretrained(vit, target, cfg.init.format, cfg.init.abs_pos, cfg.init.rel_pos)
    report.save(Path(target).with_name("load_report.json"))
    reports[backbone] = {
        "format": report.format,
        "abs_pos": report.abs_pos,
        "rel_pos": report.rel_pos,
        "loaded": len(report.loaded),
        "resized": list(report.resized),
        "missing": list(report.missing),
    }
reports

# %%
logs = sorted(out.glob("*.loss.csv"))
if logs:
    df = pd.read_csv(logs[0]).rename(columns={"step": "iteration"})
    fig = figures.loss_curves(df, f"{kind} pre-training")
    plt.show()
