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
# # Explore a finished study
# Choose runs by initialization, experiment and seed; their training curves side by side (dvclive's logs),
# predictions against the ground truth on chosen validation images, AP per category and per object size,
# TIDE's error breakdown, and two runs' configs diffed. Reads the runs' files only: nothing re-trains.

# %%
import os

import matplotlib.pyplot as plt
import seaborn as sns

from studylib.engine.build import base_dataset, build_datasets
from studylib.io import project_root
from studylib.report import explore, figures

os.chdir(project_root())  # Jupyter starts the kernel in notebooks/: every path below is the project's

# %% tags=["parameters"]
params_file = "params.yaml"
families = ["main"]  # main (the sweep) | paired | ablations | pretrain_lengths; []: every family
inits = []  # []: every initialization with a finished run
experiments = []  # []: every experiment
seeds = []  # []: every seed
image_ids = []  # validation images to draw; []: the first num_images
num_images = 3
score_thresh = 0.5  # predictions drawn from this score up
diff = []  # two run folders whose configs to compare; []: the first two chosen runs

# %%
table = explore.runs(params_file)
chosen = explore.select(table, inits, experiments, seeds, families)
chosen

# %%
df = explore.curves(chosen)
grid = sns.relplot(
    df, x="step", y="value", hue="run", col="metric", kind="line", height=3.2, facet_kws={"sharey": False}
)
grid.set(yscale="log")
plt.show()

# %%
_, val = build_datasets(explore.run_config(chosen["run"][0]))
base = base_dataset(val)
index = {image_id: i for i, image_id in enumerate(base.image_ids)}
picked = [index[i] for i in image_ids] if image_ids else list(range(min(num_images, len(val))))
samples = [base[i] for i in picked]
labels = {label: base.coco.cats[cat]["name"] for label, cat in base.label_to_category_id.items()}
names = {cat: base.coco.cats[cat]["name"] for cat in base.coco.cats}
pictures = [[figures.target_picture(im, t, labels) for im, t in samples]]
for run in chosen["run"]:
    results = explore.results(run, "segm")
    pictures.append(
        [
            figures.results_picture(im, [r for r in results if r["image_id"] == t["image_id"]], names, score_thresh)
            for im, t in samples
        ]
    )
fig = figures.image_grid(
    pictures,
    ["ground truth", *map(explore.short, chosen["run"])],
    [f"image {t['image_id']}" for _, t in samples],
    cell=3.0,
)
plt.show()

# %%
per_category = explore.per_category(chosen)
fig, ax = plt.subplots(figsize=(1.2 + 1.1 * per_category.shape[1], 0.5 + 0.4 * per_category.shape[0]))
sns.heatmap(100 * per_category, annot=True, fmt=".1f", cmap="viridis", ax=ax)
ax.set_title("box AP ×100 per category")
plt.show()
sizes = explore.per_size(chosen)
sns.catplot(sizes[sizes["AP"] >= 0], x="size", y="AP", hue="run", col="type", kind="bar", height=3.2)
plt.show()

# %%
errors = explore.tide(chosen)
fig, ax = plt.subplots(figsize=(7, 3.2))
sns.barplot(errors, x="error", y="dAP", hue="run", ax=ax)
ax.set_ylabel("ΔAP box @ IoU 0.5")
plt.show()

# %%
run_a, run_b = diff if diff else list(chosen["run"][:2])
explore.config_diff(run_a, run_b)
