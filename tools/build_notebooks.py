"""Write notebooks/*.ipynb (the study's thin papermill notebooks) from the cell sources below.

    python tools/build_notebooks.py        # after editing a cell here; commit the notebooks

Notebooks hold no `def`/`class` (the code lives in studylib), no outputs, and one cell tagged
`parameters` each; the kernelspec is python3 (dvc.yaml passes `-k python3` too).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

NOTEBOOKS["data"] = [
    ("md", "# Data\nThe embedded synthetic dataset (generated) or the COCO files named in params.yaml; "
           "a few training images with their masks and boxes."),
    ("code", "import json\nfrom pathlib import Path\n\nimport matplotlib.pyplot as plt\n\n"
             "from studylib import config\nfrom studylib.data import CocoInstances, synthetic\n"
             "from studylib.engine.build import data_paths\nfrom studylib.io import atomic_write_json\n"
             "from studylib.report import figures"),
    ("parameters", 'params_file = "params.yaml"\nout_dir = "data/synthetic"  # the stage\'s output folder\n'
                   "num_samples = 6"),
    ("code", 'cfg = config.load(params_file, "baseline")  # validates before any work\n'
             "if cfg.data.kind == \"synthetic\" and Path(cfg.data.root) != Path(out_dir):\n"
             "    raise ValueError(f\"data.root = {cfg.data.root}: the data stage writes {out_dir}; set data.root to it\")\n"
             "print(cfg.data)"),
    ("code", 'if cfg.data.kind == "synthetic":\n'
             "    meta = synthetic.generate(out_dir, synthetic.preset_config(cfg.data.synthetic_preset, **cfg.data.synthetic))\n"
             "    print(json.dumps(meta[\"counts\"], indent=1))\n"
             "paths = data_paths(cfg)\n"
             "missing = [f\"data.{k} = {v}\" for k, v in paths.items() if not v.exists()]\n"
             "if missing:\n"
             "    raise ValueError(\"missing: \" + \", \".join(missing))"),
    ("code", 'train = CocoInstances(paths["train_ann"], paths["train_images"])\n'
             'val = CocoInstances(paths["val_ann"], paths["val_images"])\n'
             "names = {label: train.coco.cats[cat][\"name\"] for label, cat in train.label_to_category_id.items()}\n"
             "manifest = {\"kind\": cfg.data.kind, **{k: str(v) for k, v in paths.items()}, \"train_images\": len(train),\n"
             "            \"val_images\": len(val), \"classes\": list(names.values())}\n"
             'if cfg.data.kind == "coco":\n'
             '    atomic_write_json(Path(out_dir) / "manifest.json", manifest)  # the stage output at COCO scale\n'
             "manifest"),
    ("code", "samples = [train[i] for i in range(min(num_samples, len(train)))]\n"
             "pictures = [[figures.target_picture(image, target, names) for image, target in samples]]\n"
             'fig = figures.image_grid(pictures, ["train"], [f"image {t[\'image_id\']}" for _, t in samples])\n'
             "plt.show()"),
]

NOTEBOOKS["pretrain"] = [
    ("md", "# Initialization\nOne of the five initializations: a release file named in params.yaml "
           "(`study.checkpoints`), copied and inspected, or pre-trained locally (the embedded default). "
           "`random` writes a marker only."),
    ("code", "import json\nimport os\nimport shutil\nfrom pathlib import Path\n\n"
             "import matplotlib.pyplot as plt\nimport pandas as pd\n\n"
             "from studylib import config, launch, pretrain\nfrom studylib.checkpoints import load_pretrained\n"
             "from studylib.engine.build import backbone_kwargs, data_paths\nfrom studylib.io import atomic_write_json\n"
             "from studylib.models import build_backbone\nfrom studylib.pretrain.config import ENCODER_KEYS\n"
             "from studylib.report import figures, study"),
    ("parameters", 'params_file = "params.yaml"\nkind = "mae"  # random | supervised | mocov3 | beit | mae\n'
                   'out_dir = "inits/mae"\nsteps = -1  # -1: study.pretrain.<kind>.steps\n'
                   'checkpoint = ""  # a release file for the scale\'s backbone; "": study.checkpoints.<kind>\n'
                   "length_run = False  # Figure 3: pre-train (or take `checkpoint`) into out_dir, ignore study.checkpoints"),
    ("code", "if kind not in config.INITS:\n"
             "    raise ValueError(f\"kind = {kind!r}; {config.closest(kind, config.INITS)}\")\n"
             "s = study.study(params_file)\n"
             'base = config.load(params_file, "baseline", [f"init.kind={kind}"] if kind == "random" else\n'
             '                   [f"init.kind={kind}", f"init.checkpoint={Path(out_dir) / \'checkpoint.pth\'}"])\n'
             "out = Path(out_dir)\nout.mkdir(parents=True, exist_ok=True)\n"
             'if kind == "random":\n    targets, releases = {}, {}\n'
             "elif length_run:  # Figure 3: one file for the scale's backbone, pre-trained here unless `checkpoint`\n"
             '    targets = {base.model.backbone: str(out / "checkpoint.pth")}\n'
             "    releases = {base.model.backbone: checkpoint} if checkpoint else {}\n"
             "else:  # inits/<kind>/checkpoint.pth for the scale's backbone, inits/<kind>/<backbone>/ for other sizes\n"
             '    targets = {config.load(params_file, e).model.backbone: study.init_checkpoint(params_file, kind, e)\n'
             '               for e in s["sizes"]}\n'
             '    targets[base.model.backbone] = str(out / "checkpoint.pth")\n'
             "    releases = {base.model.backbone: checkpoint} if checkpoint else study.release_files(params_file, kind)\n"
             "targets"),
    ("code", 'if kind == "random":\n'
             '    atomic_write_json(out / "random.json", {"kind": "random", "note": "no checkpoint: the fine-tuning '
             'run initializes the ViT (trunc-normal 0.02, BEiT rescaling) and positions by the paper\'s rule"})\n'
             "for backbone, target in targets.items():\n"
             "    target = Path(target)\n    target.parent.mkdir(parents=True, exist_ok=True)\n"
             "    if backbone in releases:\n"
             "        src = Path(releases[backbone])\n"
             "        if not src.is_file():\n"
             "            raise ValueError(f\"study.checkpoints.{kind}: {src} does not exist\")\n"
             "        target.unlink(missing_ok=True)\n"
             "        try:\n            os.link(src, target)  # a hard link: no copy of a large release file\n"
             "        except OSError:\n            shutil.copy2(src, target)\n"
             "    elif backbone == base.model.backbone:\n"
             '        cfg_kw = {**s["pretrain"].get("all", {}), **s["pretrain"].get(kind, {})}\n'
             "        if steps > 0:\n            cfg_kw[\"steps\"] = steps\n"
             "        overrides = {k: v for k, v in base.model.overrides.items() if k in ENCODER_KEYS}\n"
             "        pcfg = pretrain.PretrainConfig(backbone=backbone, overrides=overrides, **cfg_kw)\n"
             "        paths = data_paths(base)\n"
             '        root = Path(base.data.root)\n'
             '        images = paths["train_images"] if kind == "supervised" or base.data.kind == "coco" else root / "unlabeled"\n'
             '        ann = paths["train_ann"] if kind == "supervised" else None\n'
             "        summary = launch.pretrain(study.PRETRAIN_METHOD[kind], images, target, pcfg, ann_file=ann)  # $STUDYLIB_LAUNCHER\n"
             "        print(json.dumps(summary, indent=1, default=str))\n"
             "    else:\n"
             "        raise ValueError(f\"init {kind!r} for {backbone}: name a release file in study.checkpoints.{kind} \"\n"
             "                         f\"(local pre-training is for the scale's backbone {base.model.backbone} only)\")"),
    ("code", "reports = {}\n"
             "for backbone, target in targets.items():\n"
             '    cfg = base if backbone == base.model.backbone else config.load(params_file, "baseline", '
             '[f"model.backbone={backbone}"])\n'
             "    vit = build_backbone(backbone, **backbone_kwargs(cfg))\n"
             "    report = load_pretrained(vit, target, cfg.init.format, cfg.init.abs_pos, cfg.init.rel_pos)\n"
             '    report.save(Path(target).with_name("load_report.json"))\n'
             '    reports[backbone] = {"format": report.format, "abs_pos": report.abs_pos, "rel_pos": report.rel_pos,\n'
             '                         "loaded": len(report.loaded), "resized": list(report.resized), "missing": list(report.missing)}\n'
             "reports"),
    ("code", 'logs = sorted(out.glob("*.loss.csv"))\n'
             "if logs:\n"
             '    df = pd.read_csv(logs[0]).rename(columns={"step": "iteration"})\n'
             '    fig = figures.loss_curves(df, f"{kind} pre-training")\n'
             "    plt.show()"),
]

NOTEBOOKS["finetune"] = [
    ("md", "# Fine-tuning run\nMask R-CNN with the ViT of one initialization: `experiment` (a named diff in "
           "params.yaml) with the study's schedule. Writes `out_dir` (metrics.json last); shows the loss curves "
           "and predictions beside the ground truth."),
    ("code", "from pathlib import Path\n\nimport matplotlib.pyplot as plt\nimport pandas as pd\n"
             "import torch\n\nfrom studylib import config, launch\nfrom studylib.engine.build import build_datasets, build_model\n"
             "from studylib.io import atomic_write_json\nfrom studylib.report import figures, study"),
    ("parameters", 'params_file = "params.yaml"\nexperiment = "main"\ninit = "mae"\nseed = -1  # -1: the config\'s\n'
                   "schedule = 1.0  # multiplies study.epochs[pretrained|random]\n"
                   'checkpoint = ""  # "": the init stage\'s file\nout_dir = "runs/example"\n'
                   "sets = []  # extra section.key=value overrides\n"
                   "nproc_per_node = 1  # > 1 or nnodes > 1: torchrun (DDP)\nnnodes = 1\nrdzv_endpoint = \"\""),
    ("code", "run_sets = study.run_sets(params_file, init, experiment, None if seed < 0 else seed, schedule,\n"
             "                          checkpoint or None) + list(sets)\n"
             "cfg = config.load(params_file, experiment, run_sets)  # bad params fail here, before any work\n"
             "print(run_sets)\npd.Series(cfg.flat()).to_frame(\"value\")"),
    ("code", "out = Path(out_dir)\n"
             "try:  # here, under torchrun (nproc_per_node, nnodes) or as a SLURM job ($STUDYLIB_LAUNCHER, cluster.yaml)\n"
             "    metrics = launch.train(params_file, experiment, out, run_sets, nproc_per_node=nproc_per_node,\n"
             "                           nnodes=nnodes, rdzv_endpoint=rdzv_endpoint or None)\n"
             "except torch.OutOfMemoryError as e:  # Table 3 reports it: a result, not a failure\n"
             "    torch.cuda.empty_cache()\n"
             '    metrics = {"status": "oom", "error": str(e).splitlines()[0], "seed": cfg.train.seed}\n'
             '    cfg.save(out / "config.yaml")\n'
             '    atomic_write_json(out / "metrics.json", metrics)\n'
             '{k: v for k, v in metrics.items() if k.endswith("/AP") or k.startswith("train/") or k == "status"}'),
    ("code", 'if (out / "history.csv").is_file():\n'
             '    fig = figures.loss_curves(out / "history.csv", f"{cfg.name} / {init}")\n'
             "    plt.show()"),
    ("code", '_, val = build_datasets(cfg)\nbase_val = val.dataset if hasattr(val, "dataset") else val\n'
             "names = {label: base_val.coco.cats[cat][\"name\"] for label, cat in base_val.label_to_category_id.items()}\n"
             'if (out / "model.pth").is_file():\n'
             "    model = build_model(cfg, base_val.num_classes)\n"
             '    model.load_state_dict(torch.load(out / "model.pth", map_location="cpu"))\n'
             "    model.eval()\n"
             "    samples = [val[i] for i in range(min(cfg.eval.num_vis_images, len(val)))]\n"
             "    with torch.no_grad():\n"
             "        outputs = model([image for image, _ in samples])\n"
             "    pictures = [[figures.target_picture(im, t, names) for im, t in samples],\n"
             "                [figures.prediction_picture(im, o, names) for (im, _), o in zip(samples, outputs)]]\n"
             '    fig = figures.image_grid(pictures, ["ground truth", "predicted"], [f"image {t[\'image_id\']}" for _, t in samples])\n'
             "    plt.show()"),
]

NOTEBOOKS["complexity"] = [
    ("md", "# Model complexity (Table 5)\nParameters, FLOPs and activations counted at run time on real validation "
           "images (mean ± std), and inference fps, for one experiment (random weights)."),
    ("code", "import json\nfrom pathlib import Path\n\nfrom studylib import complexity, config\n"
             "from studylib.io import atomic_write_json\nfrom studylib.report import study"),
    ("parameters", 'params_file = "params.yaml"\nexperiment = "main"\nout_path = "runs/complexity/main.json"'),
    ("code", 's = study.study(params_file)["complexity"]\n'
             'cfg = config.load(params_file, experiment, ["init.kind=random", "init.checkpoint=null"])\n'
             "print(cfg.model.backbone, cfg.data.img_size)"),
    ("code", 'result = complexity.measure(cfg, s["images"], s["fps_images"])\n'
             "atomic_write_json(out_path, result)\nresult"),
]

NOTEBOOKS["report"] = [
    ("md", "# Report\nEvery table (markdown + CSV) and figure (PNG) of the study from the runs' files, "
           "beside the paper's published numbers; `results/summary.json` holds every number."),
    ("code", "import json\nfrom pathlib import Path\n\nimport matplotlib.pyplot as plt\nfrom IPython.display import Image, Markdown, display\n\n"
             "from studylib import config\nfrom studylib.data import CocoInstances\nfrom studylib.engine.build import data_paths\n"
             "from studylib.report import collect, figures, study, tables"),
    ("parameters", 'params_file = "params.yaml"\nout_dir = "results"\nnum_images = 4'),
    ("code", "summary = collect.collect(params_file)\n"
             'collect.write(summary, Path(out_dir) / "summary.json")\nsorted(summary)'),
    ("code", "frames = tables.tables(summary)\n"
             'tables.write(frames, Path(out_dir) / "tables")\n'
             "for name, df in frames.items():\n"
             '    display(Markdown(f"### {name}\\n\\n" + df.to_markdown(index=False)))'),
    ("code", 'figs = Path(out_dir) / "figures"\n'
             'figures.save(figures.main_results(summary), figs / "table1_main.png")\n'
             'figures.save(figures.convergence(summary), figs / "figure2_convergence.png")\n'
             'figures.save(figures.pretrain_length(summary), figs / "figure3_pretrain_length.png")\n'
             'figures.save(figures.tide(summary), figs / "figure4_tide.png")\n'
             's = study.study(params_file)\n'
             'first = {i: f"runs/main/{i}-{s[\'sizes\'][0]}-s{s[\'seeds\'][0]}/history.csv" for i in s["inits"]}\n'
             'figures.save(figures.training_curves(first), figs / "training_curves.png")\n'
             "sorted(p.name for p in figs.glob(\"*.png\"))"),
    ("code", 'cfg = config.load(params_file, "baseline")\npaths = data_paths(cfg)\n'
             'val = CocoInstances(paths["val_ann"], paths["val_images"])\n'
             "names = {cat: val.coco.cats[cat][\"name\"] for cat in val.coco.cats}\n"
             "samples = [val[i] for i in range(min(num_images, len(val)))]\n"
             "pictures = [[figures.draw_instances(im, t[\"boxes\"], t[\"masks\"]) for im, t in samples]]\n"
             "rows = [\"ground truth\"]\n"
             'for init in s["inits"]:\n'
             '    run = Path(study.Run("main", f"{init}-{s[\'sizes\'][0]}-s{s[\'seeds\'][0]}", "", init).out_dir)\n'
             '    results = json.loads((run / "coco_results_segm.json").read_text())\n'
             "    pictures.append([figures.results_picture(im, [r for r in results if r[\"image_id\"] == t[\"image_id\"]], names)\n"
             "                     for im, t in samples])\n"
             "    rows.append(init)\n"
             'fig = figures.image_grid(pictures, rows, [f"image {t[\'image_id\']}" for _, t in samples])\n'
             'figures.save(fig, figs / "predictions.png")'),
    ("code", 'for png in sorted(figs.glob("*.png")):\n'
             '    display(Markdown(f"### {png.stem}"), Image(filename=str(png)))'),
]


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "language_info": {"name": "python"}})
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"{name}-{i}"  # stable ids: rebuilding gives the same bytes
        if kind == "parameters":
            cell["metadata"]["tags"] = ["parameters"]
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), ROOT / "notebooks" / f"{name}.ipynb")
        print(f"notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
