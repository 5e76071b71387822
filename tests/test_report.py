"""The report from fake run folders: collect (means over seeds, every key, named errors), tables, figures
(stable PNG bytes), the study plan and its checks, and profiles applied to params.yaml."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from studylib import config, profile
from studylib.report import collect, figures, study, tables

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def micro_params(tmp_path: Path) -> dict:
    """The repository's params.yaml with the micro profile applied (as plain data)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    profile.apply("micro", tmp_path / "params.yaml", REPO / "profiles")
    return yaml.safe_load((tmp_path / "params.yaml").read_text())


def fake_run(root: Path, run: study.Run, ap: float, epochs: float, status: str = "ok") -> None:
    d = root / run.out_dir
    d.mkdir(parents=True, exist_ok=True)
    if status == "oom":
        metrics = {"status": "oom", "error": "CUDA out of memory"}
    else:
        metrics = {
            "bbox/AP": ap,
            "segm/AP": ap / 2,
            "bbox/AP50": 2 * ap,
            "train/time_s": 10.0,
            "train/iter_time_s": float("nan"),
            "train/peak_mem_gb": 1.5,
            "infer/time_per_image_s": 0.1,
            "n_parameters": 1000,
            "seed": run.seed or 0,
        }
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": epochs}}))
    rules = {"beit": ("rand", "pt")}.get(run.init, ("pt", "zero"))
    (d / "load_report.json").write_text(json.dumps({"abs_pos": rules[0], "rel_pos": rules[1]}))
    (d / "tide.json").write_text(json.dumps({e: ap for e in collect.TIDE_ERRORS}))
    (d / "history.csv").write_text(
        "iteration,loss,loss_mask,lr\n" + "".join(f"{i},{3 / i + ap},{1 / i},0.001\n" for i in range(1, 6))
    )


def fake_study(root: Path, params: dict, oom: str | None = None) -> dict[str, float]:
    """Every run the params expect, with AP = f(init, seed); returns the expected main means."""
    aps = {}
    s = params["study"]
    for family, runs in study.runs(params).items():
        for i, run in enumerate(runs):
            ap = (
                0.1
                + 0.05 * config.init_names(params).index(run.init)
                + 0.02 * (run.seed or 0)
                + (0.001 * i if family != "main" else 0)
            )
            base = s["epochs"]["random" if run.init == "random" else "pretrained"]
            fake_run(root, run, ap, base * run.schedule, "oom" if run.name == oom else "ok")
            aps.setdefault((family, run.init), []).append(ap)
    for name in s["complexity"]["experiments"]:
        c = {
            "experiment": name,
            "backbone": "vit_micro",
            "img_size": 64,
            "device": "cpu",
            "params_m": 0.5,
            "gflops": 3.0,
            "gflops_std": 0.1,
            "activations_m": 8.0,
            "activations_m_std": 0.2,
            "fps": 2.0,
        }
        (root / "runs/complexity").mkdir(parents=True, exist_ok=True)
        (root / f"runs/complexity/{name}.json").write_text(json.dumps(c))
    return {init: sum(v) / len(v) for (fam, init), v in aps.items() if fam == "main"}


def test_collect_has_every_key_and_means_over_seeds(tmp_path: Path, micro_params: dict) -> None:
    params = copy.deepcopy(micro_params)
    params["study"]["seeds"] = [0, 1, 2]
    means = fake_study(tmp_path, params, oom="attn_global_ckpt")
    summary = collect.collect(params, tmp_path)
    for key in collect.KEYS:
        assert key in summary, key
    assert set(summary["main"]) == set(params["study"]["inits"])
    for init, m in summary["main"].items():
        assert m["bbox/AP"] == pytest.approx(means[init])
        assert m["n_seeds"] == 3
        assert m["bbox/AP_std"] == pytest.approx(0.02 * (2 / 3) ** 0.5)  # pstdev of {0, .02, .04}
        assert m["train/iter_time_s"] is None  # NaN in metrics.json
    # convergence: main's 1x point (its mean over the seeds, with the std) plus each schedule
    mae = summary["convergence"]["mae"]
    base = params["study"]["epochs"]["pretrained"]
    schedules = [c["schedule"] for c in params["study"]["convergence"].values() if c["init"] == "mae"]
    assert schedules and set(mae) == {str(float(base)), *(str(float(base * x)) for x in schedules)}
    one_x = mae[str(float(base))]
    assert one_x["bbox/AP"] == pytest.approx(means["mae"]) and one_x["n_seeds"] == 3
    assert one_x["bbox/AP_std"] == pytest.approx(summary["main"]["mae"]["bbox/AP_std"])
    assert summary["attention"]["attn_global_ckpt"]["status"] == "oom"
    assert summary["attention"]["mae/hybrid (default)"]["attention"] == "hybrid"
    assert summary["multiscale"]["adaptor_single"]["adaptor"] == "single"
    assert summary["positional"]["beit_abs_rand_rel_zero"]["abs_pos"] == "rand"
    assert set(summary["tide"]["mae"]) >= set(collect.TIDE_ERRORS)
    assert summary["complexity"]["main"]["init"] == "mae"
    assert summary["complexity"]["main"]["bbox/AP"] == pytest.approx(means["mae"])
    json.dumps(summary, allow_nan=False)  # strict JSON: NaN became null


def test_collect_names_a_missing_run(tmp_path: Path, micro_params: dict) -> None:
    fake_study(tmp_path, micro_params)
    victim = study.runs(micro_params)["ablations"][0]
    (tmp_path / victim.out_dir / "metrics.json").unlink()
    with pytest.raises(ValueError, match=f"{victim.out_dir}/metrics.json is missing"):
        collect.collect(micro_params, tmp_path)


def test_tables_show_oom_and_paper_columns(tmp_path: Path, micro_params: dict) -> None:
    means = fake_study(tmp_path, micro_params, oom="attn_global_ckpt")
    frames = tables.tables(collect.collect(micro_params, tmp_path))
    att = frames["table3_attention"].set_index("run")
    assert att.loc["attn_global_ckpt", "AP box"] == "OOM"
    main = frames["table1_main"].set_index("init")
    assert main.loc["mae", "paper ViT-B (box / mask)"] == "50.3 / 44.9"
    d = 100 * (means["mae"] - means["random"])
    assert main.loc["mae", "box vs random"] == f"{d:+.1f} ({'beats' if d > 0 else 'does not beat'} random)"
    assert main.loc["random", "box vs random"] == "–"
    assert tables.vs_random({"bbox/AP": 0.20}, {"bbox/AP": 0.25}) == "-5.0 (does not beat random)"
    assert tables.vs_random({"bbox/AP": 0.31}, {"bbox/AP": 0.25}) == "+6.0 (beats random)"
    assert tables.vs_random({"bbox/AP": 0.31}, None) == "–"
    for name, df in frames.items():
        assert "nan" not in df.to_markdown(index=False), f"{name}: an empty cell shows as nan"
    paths = tables.write(frames, tmp_path / "tables")
    assert {p.suffix for p in paths} == {".md", ".csv"} and len(paths) == 2 * len(frames)
    assert "| init" in (tmp_path / "tables/table1_main.md").read_text()


def test_figures_have_stable_bytes(tmp_path: Path, micro_params: dict) -> None:
    fake_study(tmp_path, micro_params)
    summary = collect.collect(micro_params, tmp_path)
    for name in ("main_results", "convergence", "pretrain_length", "tide"):
        a = figures.save(getattr(figures, name)(summary), tmp_path / f"a_{name}.png").read_bytes()
        b = figures.save(getattr(figures, name)(summary), tmp_path / f"b_{name}.png").read_bytes()
        assert a == b, name
        assert a[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in a
    histories = {r.init: tmp_path / r.out_dir / "history.csv" for r in study.runs(micro_params)["main"]}
    a = figures.save(figures.training_curves(histories), tmp_path / "a.png").read_bytes()
    assert a == figures.save(figures.training_curves(histories), tmp_path / "b.png").read_bytes()
    assert figures.save(figures.loss_curves(next(iter(histories.values()))), tmp_path / "c.png").stat().st_size > 0


def test_published_numbers_name_their_sources() -> None:
    pub = tables.published()
    for key in ("main", "convergence", "multiscale", "attention", "positional", "pretrain_length", "complexity"):
        assert key in pub and key in pub["source"], key
    assert pub["main"]["mae"]["vit_base"] == [50.3, 44.9]


def test_study_rejects_bad_names(micro_params: dict) -> None:
    bad = copy.deepcopy(micro_params)
    bad["study"]["ablations"]["x"] = {"experiment": "attn_windw_only", "init": "mae"}
    with pytest.raises(ValueError, match="did you mean attn_window_only"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["inits"] = ["mae", "moco"]
    with pytest.raises(ValueError, match="study.inits.*'moco'.*mocov3"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["seedz"] = [0]
    with pytest.raises(ValueError, match="study.seedz.*seeds"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["convergence"]["x"] = {"init": "mea", "schedule": 2}
    with pytest.raises(ValueError, match="study.convergence.x.init.*'mea'.*mae"):
        study.check(bad)
    bad["study"]["convergence"]["x"] = {"init": "mae", "schedule": -1}
    with pytest.raises(ValueError, match="study.convergence.x = .*positive multiple"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["experiments"]["attn_global"]["model"]["attention"] = "globl"
    with pytest.raises(ValueError, match="'globl'.*global"):
        study.check(bad)


def test_run_sets_follow_the_study(micro_params: dict) -> None:
    sets = study.run_sets(micro_params, "random", seed=3, schedule=2)
    assert sets == ["init.kind=random", f"train.epochs={micro_params['study']['epochs']['random'] * 2}", "train.seed=3"]
    assert "init.checkpoint=inits/mae/checkpoint.pth" in study.run_sets(micro_params, "mae")


def test_profile_keeps_comments_and_validates(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    before = target.read_text()
    profile.apply("micro", target, REPO / "profiles")
    after = target.read_text()
    assert yaml.safe_load(after)["scale"] == "micro"
    comments = [ln.split("#", 1)[1].strip() for ln in before.splitlines() if ln.lstrip().startswith("#")]
    assert all(c in after for c in comments)  # whole-line comments survive
    assert yaml.safe_load(after)["baseline"] == yaml.safe_load(before)["baseline"]
    (tmp_path / "bad.yaml").write_text("study.seedz: [0]\n")
    with pytest.raises(ValueError, match="study.seedz.*seeds"):
        profile.apply("bad", target, tmp_path)
    (tmp_path / "bad2.yaml").write_text("study.inits: [maee]\n")
    with pytest.raises(ValueError, match="maee"):
        profile.apply("bad2", target, tmp_path)
    assert target.read_text() == after  # an invalid profile writes nothing
    with pytest.raises(ValueError, match="allowed: micro, paper"):
        profile.apply("micr", target, REPO / "profiles")


def test_paper_profile_is_valid(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    profile.apply("paper", target, REPO / "profiles")
    p = yaml.safe_load(target.read_text())
    assert p["scale"] == "paper" and p["study"]["sizes"] == ["main", "vit_large"]
    assert study.init_checkpoint(p, "mae", "vit_large") == "inits/mae/vit_large/checkpoint.pth"
    assert study.release_files(p, "mae")["vit_large"].endswith("mae_pretrain_vit_large.pth")


def test_results_picture_draws_segm_results_without_boxes() -> None:
    from pycocotools import mask as mask_utils

    image = torch.zeros(3, 32, 32)
    m = np.zeros((32, 32), dtype=np.uint8, order="F")
    m[4:12, 6:20] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    seg = [
        {"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.9},  # no "bbox": COCO segm format
        {"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.1},
    ]  # under the threshold
    drawn = figures.results_picture(image, seg, {1: "a"})
    blank = figures.results_picture(image, seg[1:], {1: "a"})
    assert drawn.shape == blank.shape and (drawn != blank).any()
    with_box = figures.results_picture(image, [{**seg[0], "bbox": [6.0, 4.0, 14.0, 8.0]}], {1: "a"})
    assert (with_box == drawn).all()  # the box taken from the mask is the mask's own box


def test_prediction_pictures_are_legible() -> None:
    """Masks translucent, one label per instance outside its box (above it, below it at the top edge), the
    picture enlarged so labels stay small; detections under the score threshold not drawn."""
    image = torch.full((3, 128, 128), 0.5)
    masks = torch.zeros(2, 128, 128)
    masks[0, 50:90, 40:100] = 1
    masks[1, 0:20, 100:128] = 1  # touches the top edge: its label goes below
    boxes = torch.tensor([[40.0, 50.0, 100.0, 90.0], [100.0, 0.0, 128.0, 20.0]])
    bare = figures.draw_instances(image, boxes, masks)
    labelled = figures.draw_instances(image, boxes, masks, ["disc 0.93", "square 0.61"])
    s = labelled.shape[0] // 128
    assert s >= 3 and labelled.shape[:2] == (128 * s, 128 * s)
    inside = (slice(50 * s + 1, 90 * s - 1), slice(40 * s + 1, 100 * s - 1))
    assert (labelled[inside] == bare[inside]).all()  # no label on the object
    assert (
        labelled[50 * s - 16 : 50 * s, 40 * s : 100 * s] != bare[50 * s - 16 : 50 * s, 40 * s : 100 * s]
    ).any()  # above
    assert (labelled[20 * s + 1 : 20 * s + 18, 100 * s :] != bare[20 * s + 1 : 20 * s + 18, 100 * s :]).any()  # below
    grey = bare[inside].reshape(-1, 3)
    assert (grey != 127).any() and (grey.astype(int).sum(1) != 0).all()  # translucent: tinted, not painted over
    plain = figures.draw_instances(image, boxes[:0], masks[:0])
    output = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.2, 0.3]),
        "masks": masks[:, None],
    }
    assert (figures.prediction_picture(image, output, {1: "disc", 2: "square"}, score_thresh=0.5) == plain).all()


def test_explore_selects_runs_and_names_what_is_missing(tmp_path: Path) -> None:
    import pandas as pd

    from studylib.report import explore

    table = pd.DataFrame(
        [
            {
                "family": "main",
                "name": f"{i}-main-s{s}",
                "experiment": "main",
                "init": i,
                "seed": s,
                "run": f"runs/main/{i}-main-s{s}",
            }
            for i in ("random", "mae")
            for s in (0, 1)
        ]
    )
    assert list(explore.select(table, inits=["mae"], seeds=[1])["name"]) == ["mae-main-s1"]
    assert len(explore.select(table)) == 4
    with pytest.raises(ValueError, match="init mea: no finished run.*did you mean mae"):
        explore.select(table, inits=["mea"])
    for run, lr in (("a", "1e-4"), ("b", "2e-4")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": float(lr), "weight_decay": 0.1}}))
    diff = explore.config_diff(tmp_path / "a", tmp_path / "b")
    assert list(diff.index) == ["train.lr"] and diff.iloc[0].tolist() == [1e-4, 2e-4]
    with pytest.raises(ValueError, match="c/config.yaml is missing"):
        explore.config_diff(tmp_path / "a", tmp_path / "c")
