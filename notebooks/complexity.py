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
# # Model complexity (Table 5)
# Parameters, FLOPs and activations counted at run time on real validation images (mean ± std), and inference fps, for one experiment.
# `weights`: a finished run's folder (its final `model.pth`) or the file, loaded into the experiment's detector, as
# the paper counts trained models (the RoI heads' share depends on the detections); "" counts random weights.
# ViTs run at their square input, ResNets at the image's own aspect ratio (longest side img_size).

# %%
import os

from studylib import complexity, config
from studylib.io import atomic_write_json, project_root
from studylib.report import study

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
experiment = "main"
out_path = ""  # "": runs/complexity/<experiment>.json
weights = ""  # a trained run's folder (or its model.pth) of this experiment's model; "none": random weights;
# "": study.complexity.weights.<experiment> if it names one, else random weights

# %%
s = study.study(params_file)["complexity"]
cfg = config.load(params_file, experiment, ["init.kind=random", "init.checkpoint=null"])
out_path = out_path or f"runs/complexity/{experiment}.json"
weights = "" if weights == "none" else weights or (s.get("weights") or {}).get(experiment, "")
print(cfg.model.backbone, cfg.data.img_size, out_path, weights or "random weights")

# %%
result = complexity.measure(cfg, s["images"], s["fps_images"], weights=weights or None)
atomic_write_json(out_path, result)
result
