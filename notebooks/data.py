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
# # Data
# The embedded synthetic dataset (generated) or the COCO files named in params.yaml; a few training images with their masks and boxes.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

from studylib import config
from studylib.data import CocoInstances, synthetic
from studylib.engine.build import data_paths
from studylib.io import atomic_write_json, project_root
from studylib.report import figures

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
out_dir = ""  # the stage's output folder; "": data.root
num_samples = 6

# %%
cfg = config.load(params_file, "baseline")  # validates before any work
out_dir = out_dir or cfg.data.root
if cfg.data.kind == "synthetic" and Path(cfg.data.root) != Path(out_dir):
    raise ValueError(f"data.root = {cfg.data.root}: the data stage writes {out_dir}; set data.root to it")
print(cfg.data)

# %%
if cfg.data.kind == "synthetic":
    meta = synthetic.generate(out_dir, synthetic.preset_config(cfg.data.synthetic_preset, **cfg.data.synthetic))
    print(json.dumps(meta["counts"], indent=1))
paths = data_paths(cfg)
missing = [f"data.{k} = {v}" for k, v in paths.items() if not v.exists()]
if missing:
    raise ValueError("missing: " + ", ".join(missing))

# %%
train = CocoInstances(paths["train_ann"], paths["train_images"])
val = CocoInstances(paths["val_ann"], paths["val_images"])
names = {label: train.coco.cats[cat]["name"] for label, cat in train.label_to_category_id.items()}
manifest = {
    "kind": cfg.data.kind,
    **{k: str(v) for k, v in paths.items()},
    "train_images": len(train),
    "val_images": len(val),
    "classes": list(names.values()),
}
if cfg.data.kind == "coco":
    atomic_write_json(Path(out_dir) / "manifest.json", manifest)  # the stage output at COCO scale
manifest

# %%
samples = [train[i] for i in range(min(num_samples, len(train)))]
pictures = [[figures.target_picture(image, target, names) for image, target in samples]]
fig = figures.image_grid(pictures, ["train"], [f"image {t['image_id']}" for _, t in samples])
plt.show()
