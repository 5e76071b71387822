"""The report from fake run folders: collect (means over seeds, every key, named errors), tables, figures
(stable PNG bytes), the study plan and its checks, and profiles applied to params.yaml."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
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


def fake_ap(params: dict, run: study.Run, i: int = 0) -> float:
    """AP = f(init, seed, length): pre-trained inits peak at their middle length, random rises to its longest."""
    s = params["study"]
    rank = config.init_names(params).index(run.init)
    if run.family in ("main", "paired"):
        x = run.epochs / s["epochs"][study.kind_of(run.init)]
        shape = 0.01 * x if run.init == "random" else -0.01 * (x - 2) ** 2
        return 0.1 + 0.05 * rank + 0.02 * (run.seed or 0) + shape
    return 0.1 + 0.05 * rank + 0.001 * i


def fake_study(root: Path, params: dict, oom: str | None = None) -> None:
    """Every run the params expect, with AP = `fake_ap`, and Table 5's counts."""
    s = params["study"]
    for runs in study.runs(params).values():
        for i, run in enumerate(runs):
            fake_run(root, run, fake_ap(params, run, i), run.epochs, "oom" if run.name == oom else "ok")
    for name in [*(s["complexity"].get("weights") or {}), *s["complexity"]["experiments"]]:
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


def test_collect_has_every_key_and_means_over_seeds(tmp_path: Path, micro_params: dict) -> None:
    params = copy.deepcopy(micro_params)
    params["study"]["seeds"] = [0, 2, 4]
    params["study"]["schedules"], params["study"]["random_schedules"] = [1, 2, 4], [8]
    params["study"]["paired"] = {
        "epochs": 2 * params["study"]["epochs"]["pretrained"],
        "inits": ["random", "mae"],
        "seeds": [1, 3],
    }
    fake_study(tmp_path, params, oom="attn_global_ckpt")
    summary = collect.collect(params, tmp_path)
    for key in collect.KEYS:
        assert key in summary, key
    s = params["study"]
    assert set(summary["main"]) == set(s["inits"])
    for init, m in summary["main"].items():
        # Table 1: the best schedule (pre-trained: the middle one, x2; random: its longest, x8)
        x = 8 if init == "random" else 2
        best = float(s["epochs"][study.kind_of(init)] * x)
        assert m["epochs"] == best, init
        seeds = [0, 2, 4] + ([1, 3] if init in s["paired"]["inits"] and best == s["paired"]["epochs"] else [])
        want = [fake_ap(params, study.Run("main", "", "main", init, sd, best)) for sd in seeds]
        assert m["bbox/AP"] == pytest.approx(np.mean(want)) and m["n_seeds"] == len(seeds)
        assert m["bbox/AP_std"] == pytest.approx(np.std(want))
        assert m["train/iter_time_s"] is None  # NaN in metrics.json
        assert set(m["schedules"]) == {collect.ekey(e) for e in study.sweep_epochs(s, init).values()}
    # the paired difference at study.paired.epochs: mae has seeds 0 2 4 of the sweep and 1 3 of the paired stage
    pair = summary["main"]["mae"]["bbox/AP_vs_random"]
    assert pair["epochs"] == s["paired"]["epochs"] and pair["seeds"] == [0, 1, 2, 3, 4]
    d = [
        fake_ap(params, study.Run("main", "", "main", i, sd, s["paired"]["epochs"]))
        for i in ("mae", "random")
        for sd in range(5)
    ]
    diffs = np.array(d[:5]) - np.array(d[5:])
    assert pair["mean"] == pytest.approx(diffs.mean()) and pair["ci95"][0] <= pair["mean"] <= pair["ci95"][1]
    assert summary["main"]["beit"]["bbox/AP_vs_random"]["seeds"] == [0, 2, 4]  # beit: the sweep's seeds only
    # Figure 2: every init at every length of its sweep, one shared grid, each point a mean with its seeds
    conv = summary["convergence"]
    for init in s["inits"]:
        assert set(conv[init]) == {collect.ekey(e) for e in study.sweep_epochs(s, init).values()}
        for point in conv[init].values():
            assert {"bbox/AP", "bbox/AP_std", "segm/AP", "seeds"} <= set(point) and len(point["seeds"]) >= 3
    assert set(conv["mae"]) < set(conv["random"])  # random reaches past the others' longest
    assert summary["attention"]["attn_global_ckpt"]["status"] == "oom"
    assert summary["attention"]["mae/hybrid (default)"]["attention"] == "hybrid"
    ab = {r.name: r for r in study.runs(params)["ablations"]}["attn_global_ckpt"]
    assert summary["attention"]["mae/hybrid (default)"]["epochs"] == ab.epochs  # the default at the same length
    assert summary["multiscale"]["adaptor_single"]["adaptor"] == "single"
    assert summary["positional"]["beit_abs_rand_rel_zero"]["abs_pos"] == "rand"
    assert set(summary["tide"]["mae"]) >= set(collect.TIDE_ERRORS)
    weights = s["complexity"]["weights"]["main"]
    assert summary["complexity"]["main"]["init"] == "mae" and summary["complexity"]["main"]["weights_run"] == weights
    json.dumps(summary, allow_nan=False)  # strict JSON: NaN became null


def test_collect_names_a_missing_run(tmp_path: Path, micro_params: dict) -> None:
    fake_study(tmp_path, micro_params)
    victim = study.runs(micro_params)["ablations"][0]
    (tmp_path / victim.out_dir / "metrics.json").unlink()
    with pytest.raises(ValueError, match=f"{victim.out_dir}/metrics.json is missing"):
        collect.collect(micro_params, tmp_path)


def test_tables_show_oom_and_paper_columns(tmp_path: Path, micro_params: dict) -> None:
    fake_study(tmp_path, micro_params, oom="attn_global_ckpt")
    summary = collect.collect(micro_params, tmp_path)
    frames = tables.tables(summary)
    att = frames["table3_attention"].set_index("run")
    assert att.loc["attn_global_ckpt", "AP box"] == "OOM"
    main = frames["table1_main"].set_index("init")
    assert main.loc["mae", "paper ViT-B (box / mask)"] == "50.3 / 44.9"
    col = f"box − random at {micro_params['study']['paired']['epochs']:g} epochs (paired, 95% CI)"
    assert main.loc["random", col] == "–"
    assert main.loc["mae", "best epochs"] == f"{summary['main']['mae']['epochs']:g}"
    pair = summary["main"]["mae"]["bbox/AP_vs_random"]
    assert main.loc["mae", col].startswith(f"{100 * pair['mean']:+.1f} [")
    assert tables.paired({"bbox/AP_vs_random": {"mean": 0.02, "ci95": [0.01, 0.03], "seeds": [0, 1, 2]}}) == (
        "+2.0 [+1.0, +3.0] (beats random; n = 3)"
    )
    assert "not separable" in tables.paired(
        {"bbox/AP_vs_random": {"mean": 0.02, "ci95": [-0.01, 0.05], "seeds": [0, 1]}}
    )
    assert "below random" in tables.paired(
        {"bbox/AP_vs_random": {"mean": -0.02, "ci95": [-0.03, -0.01], "seeds": [0, 1]}}
    )
    assert (
        tables.paired({"bbox/AP_vs_random": {"mean": 0.02, "ci95": None, "seeds": [0]}}) == "+2.0 (n = 1: no interval)"
    )
    assert tables.vs_random({"bbox/AP": 0.20}, {"bbox/AP": 0.25}) == "-5.0"
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
    bad["study"]["ablations"]["x"] = {
        "experiment": "attn_windw_only",
        "init": "mae",
        "size": "main",
        "schedule": 1,
        "checkpoint": "",
    }
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
    bad["study"]["convergence"] = {}
    with pytest.raises(ValueError, match="study.convergence.*schedule sweep now"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["schedules"] = [1, -2]
    with pytest.raises(ValueError, match="study.schedules = .*positive multiples"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["paired"]["epochs"] = 0.3
    with pytest.raises(ValueError, match="study.paired.epochs = 0.3 is not a length of random's sweep"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["paired"]["seeds"] = [0]
    with pytest.raises(ValueError, match=r"study.paired.seeds \[0\] are in study.seeds"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["ablations"]["adaptor_single"]["size"] = "vit_large"
    with pytest.raises(ValueError, match="adaptor_single.size = 'vit_large' is not one of study.sizes"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["ablations"]["adaptor_single"]["schedule"] = 3
    with pytest.raises(ValueError, match="ablations.adaptor_single: the sweep has no run of mae.*default row"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["study"]["complexity"]["weights"] = {"main": "runs/main/mae-main-x9-s0"}
    with pytest.raises(ValueError, match="weights.main = 'runs/main/mae-main-x9-s0' is not a run of the study"):
        study.check(bad)
    bad = copy.deepcopy(micro_params)
    bad["experiments"]["attn_global"]["model"]["attention"] = "globl"
    with pytest.raises(ValueError, match="'globl'.*global"):
        study.check(bad)


def test_run_sets_follow_the_study(micro_params: dict) -> None:
    sets = study.run_sets(micro_params, "random", seed=3, schedule=2)
    assert sets == [
        "init.kind=random",
        f"train.epochs={micro_params['study']['epochs']['random'] * 2.0}",
        "train.seed=3",
    ]
    assert "init.checkpoint=inits/mae/checkpoint.pth" in study.run_sets(micro_params, "mae")
    assert "train.epochs=7.0" in study.run_sets(micro_params, "mae", schedule=2, epochs=7)  # epochs win


def test_experiments_compose_with_plus(micro_params: dict) -> None:
    """`size+ablation`: the size's diff, then the ablation's (Tables 2-4 on ViT-L)."""
    cfg = config.load(micro_params, "vit_large+adaptor_single")
    assert (cfg.model.backbone, cfg.model.adaptor, cfg.model.drop_path) == ("vit_large", "single", 0.3)
    with pytest.raises(ValueError, match="unknown experiment 'adaptor_singel'.*adaptor_single"):
        config.load(micro_params, "vit_large+adaptor_singel")


def plan_of(tmp_path: Path, name: str) -> list[dict]:
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    if name != "embedded":
        profile.apply(name, target, REPO / "profiles")
    out = subprocess.run(
        [sys.executable, "-m", "studylib.report.study", "plan", "--params", str(target), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return json.loads(out)["runs"]


def test_plan_of_the_paper_profile_is_the_papers_design(tmp_path: Path) -> None:
    rows = plan_of(tmp_path, "paper")
    assert all(set(r) >= {"stage", "tables", "experiment", "backbone", "init", "epochs", "seed"} for r in rows)
    sweep = [r for r in rows if "table1" in r["tables"] and r["stage"] in ("main", "longer")]
    for backbone in ("vit_base", "vit_large"):
        for init in ("random", "supervised", "mocov3", "beit", "mae"):
            got = sorted(r["epochs"] for r in sweep if r["backbone"] == backbone and r["init"] == init)
            assert got == ([50, 100, 200, 400] if init == "random" else [25, 50, 100]), (backbone, init, got)
            assert all("figure2" in r["tables"] for r in sweep)

    def table(t: str) -> list[dict]:
        return [r for r in rows if t in r["tables"] and r["stage"] not in ("main", "longer")]

    assert sorted((r["backbone"], r["init"], r["epochs"]) for r in table("table2")) == [
        ("vit_base", "mae", 50),
        ("vit_large", "mae", 50),
    ]
    assert [(r["backbone"], r["init"], r["epochs"]) for r in table("table3")] == [("vit_large", "mae", 50)] * 3
    t4 = table("table4")
    assert sorted(r["init"] for r in t4) == ["beit", "beit", "mae"] and {r["epochs"] for r in t4} == {50}
    assert any(r["init"] == "beit" and r["checkpoint"] for r in t4)  # BEiT†: its own file
    assert all(r["backbone"] == "vit_large" for r in t4)
    f3 = table("figure3")
    assert len(f3) >= 2 and {(r["backbone"], r["init"], r["epochs"]) for r in f3} == {("vit_large", "mae", 50)}
    t5 = [r for r in rows if r["stage"] == "complexity"]
    assert {r["backbone"] for r in t5} == {"vit_base", "vit_large", "resnet101"}
    assert all(r["checkpoint"] for r in t5)  # counted on trained models
    r101 = next(r for r in rows if r["stage"] == "ablation" and r["backbone"] == "resnet101")
    assert r101["init"] == "random" and r101["epochs"] == 400 and r101["tables"] == ["table5"]


def test_plan_of_the_embedded_profile_sweeps_every_init(tmp_path: Path) -> None:
    rows = plan_of(tmp_path, "embedded")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    sweep = [r for r in rows if r["stage"] in ("main", "longer")]
    lengths = {}
    for r in sweep:
        lengths.setdefault(r["init"], set()).add(r["epochs"])
        assert sorted(x["seed"] for x in sweep if (x["init"], x["epochs"]) == (r["init"], r["epochs"])) == sorted(
            p["study"]["seeds"]
        )
    shared = set.intersection(*lengths.values())
    assert all(len(v) >= 3 for v in lengths.values()) and len(lengths["random"]) >= 4
    assert max(lengths["random"]) > max(max(v) for i, v in lengths.items() if i != "random")
    assert all(lengths[i] == shared for i in lengths if i != "random")  # one shared grid
    paired = [r for r in rows if r["stage"] == "paired"]
    assert {r["init"] for r in paired} == {"random", "mae"} and {r["epochs"] for r in paired} <= shared


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


def test_readme_plans_are_the_params_plans() -> None:
    """The README's plan tables (embedded, paper) are what `study plan` prints for the params as they are."""
    r = subprocess.run([sys.executable, "tools/plan_readme.py", "--check"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_readme_calibration_table_is_the_calibration_results() -> None:
    """The README's calibration table is benchmarks/results/calibration_cpu.json's, never typed by hand."""
    r = subprocess.run(
        [sys.executable, "benchmarks/calibration.py", "readme", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, "run: python benchmarks/calibration.py readme"


def test_calibration_keeps_settings_apart_and_pairs_by_seed(tmp_path: Path) -> None:
    """benchmarks/calibration.py: runs differing only in lr, image size or LSJ range are separate settings,
    and MAE − random is paired by seed within a setting."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import calibration

    def run(name: str, init: str, seed: int, ap: float, lr: float = 2.5e-3, img: int = 96, lsj=(0.5, 2.0)) -> None:
        d = tmp_path / name
        d.mkdir()
        cfg = {"init": {"kind": init}, "data": {"num_train_images": 200, "img_size": img, "scale_range": list(lsj)}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        metrics = {"train/iterations": 200, "train/global_batch": 8, "train/lr_eff": lr, "seed": seed}
        (d / "metrics.json").write_text(json.dumps(metrics | {"bbox/AP": ap, "segm/AP": ap}))

    for seed, (r, m) in enumerate([(0.20, 0.30), (0.22, 0.28), (0.18, 0.29)]):
        run(f"r{seed}", "random", seed, r)
        run(f"m{seed}", "mae", seed, m)
    run("r-lsj01", "random", 0, 0.10, lsj=(0.1, 2.0))
    run("r-128", "random", 0, 0.12, img=128)
    run("r-lr", "random", 0, 0.05, lr=5e-3)
    (tmp_path / "unfinished").mkdir()
    rows = [x for d in sorted(tmp_path.iterdir()) if (x := calibration.read(d))]
    settings = calibration.summarise(rows)
    assert len(settings) == 4
    ours = next(s for s in settings if (s["lsj"], s["img_size"], s["lr"]) == ("0.5–2", 96, 2.5e-3))
    assert ours["mae_minus_random"]["seeds"] == [0, 1, 2]
    assert ours["mae_minus_random"]["mean"] == pytest.approx((0.10 + 0.06 + 0.11) / 3)
    assert "| 200 | 200 | 8 | 0.0025 | 96 | 0.5–2 |" in calibration.table({"settings": settings})


def test_study_readme_words_the_findings_from_the_summary(tmp_path: Path, micro_params: dict) -> None:
    """tools/study_readme.py: the README's study section is the report's files, its findings worded from them."""
    fake_study(tmp_path, micro_params)
    summary = collect.collect(micro_params, tmp_path)
    results = tmp_path / "results"
    tables.write(tables.tables(summary), results / "tables")
    (results / "figures").mkdir(parents=True)
    collect.write(summary, results / "summary.json")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- study:begin -->\nold\n<!-- study:end -->\nrest\n")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/study_readme.py"),
            "--results",
            str(results),
            "--docs",
            str(tmp_path / "docs"),
            "--readme",
            str(readme),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    pair = summary["main"]["mae"]["bbox/AP_vs_random"]
    assert f"**mae − random at {pair['epochs']:g} epochs, paired by seed** (n = {len(pair['seeds'])})" in text
    assert f"mae {100 * summary['main']['mae']['bbox/AP']:.1f}" in text and "| init" in text and "old" not in text
    assert text.startswith("intro\n") and text.endswith("rest\n")
