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
# # Report
# Every table (markdown + CSV) and figure (PNG) of the study from the runs' files, beside the paper's published numbers; `results/summary.json` holds every number.

# %%
import json
import os
from pathlib import Path

from IPython.display import Image, Markdown, display

from studylib import config
from studylib.data import CocoInstances
from studylib.engine.build import data_paths
from studylib.io import project_root
from studylib.report import collect, figures, study, tables

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
out_dir = "results"
num_images = 4

# %%
summary = collect.collect(params_file)
collect.write(summary, Path(out_dir) / "summary.json")
sorted(summary)

# %%
frames = tables.tables(summary)
tables.write(frames, Path(out_dir) / "tables")
for name, df in frames.items():
    display(Markdown(f"### {name}\n\n" + df.to_markdown(index=False)))

# %%
figs = Path(out_dir) / "figures"
figures.save(figures.main_results(summary), figs / "table1_main.png")
figures.save(figures.convergence(summary), figs / "figure2_convergence.png")
figures.save(figures.pretrain_length(summary), figs / "figure3_pretrain_length.png")
figures.save(figures.tide(summary), figs / "figure4_tide.png")
s = study.study(params_file)
first = {i: f"{study.reference_run(params_file, i).out_dir}/history.csv" for i in s["inits"]}
figures.save(figures.training_curves(first), figs / "training_curves.png")
sorted(p.name for p in figs.glob("*.png"))

# %%
cfg = config.load(params_file, "baseline")
paths = data_paths(cfg)
val = CocoInstances(paths["val_ann"], paths["val_images"])
names = {cat: val.coco.cats[cat]["name"] for cat in val.coco.cats}
samples = [val[i] for i in range(min(num_images, len(val)))]
pictures = [[figures.draw_instances(im, t["boxes"], t["masks"]) for im, t in samples]]
rows = ["ground truth"]
for init in s["inits"]:
    run = Path(study.reference_run(params_file, init).out_dir)
    results = json.loads((run / "coco_results_segm.json").read_text())
    pictures.append(
        [
            figures.results_picture(im, [r for r in results if r["image_id"] == t["image_id"]], names)
            for im, t in samples
        ]
    )
    rows.append(init)
fig = figures.image_grid(pictures, rows, [f"image {t['image_id']}" for _, t in samples])
figures.save(fig, figs / "predictions.png")

# %%
for png in sorted(figs.glob("*.png")):
    display(Markdown(f"### {png.stem}"), Image(filename=str(png)))
