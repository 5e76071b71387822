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
# # Fine-tuning run
# Mask R-CNN with the ViT of one initialization: `experiment` (a named diff in params.yaml); a parameter
# left at its default keeps the experiment's own value (the study's stages pass init, schedule and seed).
# Writes `out_dir` (metrics.json last); shows the loss curves and predictions beside the ground truth.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from studylib import config, launch
from studylib.engine.build import build_datasets, build_model
from studylib.io import atomic_write_json, project_root
from studylib.report import figures, study

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
experiment = "main"
init = ""  # "": the experiment's init.kind; else random | supervised | mocov3 | beit | mae
checkpoint = ""  # "": the experiment's init.checkpoint (given `init`: the init stage's file)
seed = -1  # -1: the experiment's train.seed
schedule = -1.0  # -1: the experiment's train.epochs; > 0: study.epochs[pretrained|random] x schedule
epochs = -1.0  # > 0: train.epochs itself (wins over schedule)
out_dir = "runs/example"
sets = []  # extra section.key=value overrides
nproc_per_node = 1  # > 1 or nnodes > 1: torchrun (DDP)
nnodes = 1
rdzv_endpoint = ""

# %%
run_sets = study.run_sets(
    params_file,
    init or None,
    experiment,
    None if seed < 0 else seed,
    schedule if schedule > 0 else None,
    checkpoint or None,
    epochs if epochs > 0 else None,
) + list(sets)
cfg = config.load(params_file, experiment, run_sets)  # bad params fail here, before any work
resolved = {
    "experiment": cfg.name,
    "init.kind": cfg.init.kind,
    "init.checkpoint": cfg.init.checkpoint,
    "train.seed": cfg.train.seed,
    "train.epochs": cfg.train.epochs,
    "train.max_iters": cfg.train.max_iters,
    "sets": run_sets,
}
print("resolved:", json.dumps(resolved))
pd.Series(cfg.flat()).to_frame("value")

# %%
out = Path(out_dir)
try:  # here, under torchrun (nproc_per_node, nnodes) or as a SLURM job ($STUDYLIB_LAUNCHER, cluster.yaml)
    metrics = launch.train(
        params_file,
        experiment,
        out,
        run_sets,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        rdzv_endpoint=rdzv_endpoint or None,
    )
except torch.OutOfMemoryError as e:  # Table 3 reports it: a result, not a failure
    torch.cuda.empty_cache()
    metrics = {"status": "oom", "error": str(e).splitlines()[0], "seed": cfg.train.seed}
    cfg.save(out / "config.yaml")
    atomic_write_json(out / "metrics.json", metrics)
{k: v for k, v in metrics.items() if k.endswith("/AP") or k.startswith("train/") or k == "status"}

# %%
if (out / "history.csv").is_file():
    fig = figures.loss_curves(out / "history.csv", f"{cfg.name} / {cfg.init.kind}")
    plt.show()

# %%
_, val = build_datasets(cfg)
base_val = val.dataset if hasattr(val, "dataset") else val
names = {label: base_val.coco.cats[cat]["name"] for label, cat in base_val.label_to_category_id.items()}
if (out / "model.pth").is_file():
    model = build_model(cfg, base_val.num_classes)
    model.load_state_dict(torch.load(out / "model.pth", map_location="cpu"))
    model.eval()
    samples = [val[i] for i in range(min(cfg.eval.num_vis_images, len(val)))]
    with torch.no_grad():
        outputs = model([image for image, _ in samples])
    pictures = [
        [figures.target_picture(im, t, names) for im, t in samples],
        [figures.prediction_picture(im, o, names) for (im, _), o in zip(samples, outputs)],
    ]
    fig = figures.image_grid(pictures, ["ground truth", "predicted"], [f"image {t['image_id']}" for _, t in samples])
    plt.show()
