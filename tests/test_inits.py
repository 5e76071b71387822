"""Your own initialization beside the paper's five: `python -m studylib.inits add / list / remove` on the
micro profile (comments kept, validated, errors naming the fault), a file per model size at paper scale,
the report treating it as a row of its own; `add_reproduce_remove`: a finished micro study (tests/test_pipeline.py's
slow DAG test) re-running only the added initialization's stages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from studylib import config, inits, profile
from studylib.engine.build import backbone_kwargs
from studylib.models import build_backbone
from studylib.models.pos_embed import get_2d_sincos_pos_embed
from studylib.report import collect, figures, study, tables

REPO = Path(__file__).resolve().parents[1]


def mae_release(path: Path, backbone: str, cheap: bool = False, **overrides) -> Path:
    """A file in MAE's release layout ({'model': encoder}, sin-cos pos_embed with a class slot, final norm) for
    `backbone` with `overrides`; `cheap`: every weight an expanded scalar (a ViT-L in a few kB)."""
    with torch.device("meta"):
        vit = build_backbone(backbone, **overrides)
    g = torch.Generator().manual_seed(0)

    def tensor(shape):
        return torch.randn(1, generator=g).expand(*shape) if cheap else 0.02 * torch.randn(*shape, generator=g)

    sd = {k: tensor(v.shape) for k, v in vit.state_dict().items() if k.startswith(("patch_embed", "blocks"))}
    side = vit.pretrain_grid[0]
    sd["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(vit.embed_dim, side, cls_token=True))[None].float()
    sd["cls_token"] = torch.zeros(1, 1, vit.embed_dim)
    sd["norm.weight"], sd["norm.bias"] = torch.ones(vit.embed_dim), torch.zeros(vit.embed_dim)
    torch.save({"model": sd}, path)
    return path


@pytest.fixture()
def micro(tmp_path: Path, monkeypatch) -> Path:
    """A folder with params.yaml under the micro profile and a MAE-layout file of the micro model: mine.pth."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    profile.apply("micro", tmp_path / "params.yaml", REPO / "profiles")
    monkeypatch.chdir(tmp_path)
    cfg = config.load("params.yaml", "main")
    mae_release(tmp_path / "mine.pth", cfg.model.backbone, **cfg.model.overrides)
    return tmp_path


def cli(*args: str, params: str = "params.yaml") -> int:
    return inits.main(["--params", params, *args])


def test_add_writes_the_three_entries_keeps_comments_and_lists_the_rule(micro: Path, capsys) -> None:
    before = (micro / "params.yaml").read_text()
    assert cli("add", "mine", "--checkpoint", "mine.pth") == 0
    out = capsys.readouterr().out
    assert "mine: format mae (detected)" in out and "abs_pos pt, rel_pos zero" in out  # the loader's report
    assert "runs/main/mine-main-x1-s0" in out  # every length of the sweep (the micro profile's: one)
    after = (micro / "params.yaml").read_text()
    p = yaml.safe_load(after)
    assert p["recipes"]["mine"] == p["recipes"]["mae"]
    assert p["study"]["inits"] == ["random", "supervised", "mocov3", "beit", "mae", "mine"]
    assert p["study"]["checkpoints"]["mine"] == {"file": "mine.pth", "format": "mae"}
    comments = [ln.split("#", 1)[1].strip() for ln in before.splitlines() if "#" in ln]
    assert all(c in after for c in comments)
    sets = study.run_sets(p, "mine", seed=0)
    assert {
        "init.kind=mine",
        "init.checkpoint=inits/mine/checkpoint.pth",
        "init.format=mae",
        f"train.epochs={p['study']['epochs']['pretrained']}",
    } <= set(sets)
    cfg = config.load(p, "main", sets)
    assert (cfg.init.kind, cfg.train.weight_decay) == ("mine", p["recipes"]["mae"]["weight_decay"])

    assert cli("list") == 0
    table = capsys.readouterr().out
    row = next(ln for ln in table.splitlines() if ln.startswith("| mine"))
    assert "yours" in row and "mine.pth" in row and "| mae " in row and "abs pt, rel zero" in row
    assert "abs rand, rel pt" in next(ln for ln in table.splitlines() if ln.startswith("| beit"))

    assert cli("add", "slow", "--checkpoint", "mine.pth", "--recipe-like", "random", "--lr", "2e-4") == 0
    assert "note: scale 'micro' sets train.lr for every initialization" not in capsys.readouterr().out
    p = yaml.safe_load((micro / "params.yaml").read_text())
    assert p["recipes"]["slow"] == {"lr": 2e-4, "weight_decay": p["recipes"]["random"]["weight_decay"]}
    assert cli("remove", "slow") == 0 and cli("remove", "mine") == 0
    assert yaml.safe_load((micro / "params.yaml").read_text()) == yaml.safe_load(before)


def test_lr_note_where_the_scale_fixes_the_lr(tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # the embedded scale: one lr for every init
    monkeypatch.chdir(tmp_path)
    cfg = config.load("params.yaml", "main")
    mae_release(tmp_path / "mine.pth", cfg.model.backbone, cheap=True, **cfg.model.overrides)
    assert cli("add", "mine", "--checkpoint", "mine.pth", "--lr", "1e-4", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "note: scale 'embedded' sets train.lr for every initialization: recipes.mine.lr" in out
    assert (
        "mine: {lr: 0.0001, weight_decay: 0.1}" in out and "inits: [random, supervised, mocov3, beit, mae, mine]" in out
    )
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # --dry-run


def test_a_beit_layout_gets_layer_scale_and_beits_positional_rule(micro: Path, capsys) -> None:
    from timm.models.beit import Beit

    cfg = config.load("params.yaml", "main")
    o = cfg.model.overrides
    beit = Beit(
        img_size=64,
        patch_size=8,
        embed_dim=o["embed_dim"],
        depth=o["depth"],
        num_heads=o["num_heads"],
        num_classes=0,
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        init_values=0.1,
    )
    torch.save({"model": beit.state_dict()}, micro / "beitlike.pth")
    assert cli("add", "beitlike", "--checkpoint", "beitlike.pth", "--recipe-like", "beit") == 0
    assert "beitlike: format beit (detected)" in capsys.readouterr().out
    report = inits.inspect("params.yaml", "beitlike", "main")
    assert (report.abs_pos, report.rel_pos) == ("rand", "pt")  # the paper's rule for BEiT
    assert {"blocks.0.ls1.gamma", "blocks.0.attn.qkv.bias"} <= set(report.loaded)  # layer scale built for it
    assert cli("list") == 0
    assert "abs rand, rel pt" in next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| beitlike"))


@pytest.mark.parametrize(
    "name, file, message",
    [
        ("mae", "mine.pth", "initialization 'mae' exists already"),
        ("my-init", "mine.pth", "initialization name 'my-init'"),
        ("mine", "absent.pth", "initialization 'mine': checkpoint file 'absent.pth' does not exist"),
        ("mine", "wide.pth", r"initialization 'mine' for experiment 'main' \(vit_micro\): wide.pth: shape mismatch"),
        ("mine", "patch16.pth", r"patch16.pth: patch_embed.proj.weight .* 16x16 kernel, the backbone patch_size=8"),
    ],
)
def test_add_refuses_and_names_the_fault(micro: Path, capsys, name: str, file: str, message: str) -> None:
    cfg = config.load("params.yaml", "main")
    mae_release(micro / "wide.pth", cfg.model.backbone, **{**cfg.model.overrides, "embed_dim": 32})
    mae_release(micro / "patch16.pth", cfg.model.backbone, **{**cfg.model.overrides, "patch_size": 16})
    before = (micro / "params.yaml").read_text()
    assert cli("add", name, "--checkpoint", file) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (micro / "params.yaml").read_text() == before  # nothing written


def test_check_names_a_user_file_gone_missing(micro: Path) -> None:
    assert cli("add", "mine", "--checkpoint", "mine.pth") == 0
    (micro / "mine.pth").unlink()
    p = yaml.safe_load((micro / "params.yaml").read_text())
    with pytest.raises(ValueError, match="initialization 'mine' for experiment 'main'.*'mine.pth' does not exist"):
        study.check(p)
    p["study"]["checkpoints"]["mine"] = None
    with pytest.raises(ValueError, match="study.checkpoints.mine is null: 'mine' is not one of the paper's"):
        study.check(p)
    del p["study"]["checkpoints"]["mine"]
    with pytest.raises(ValueError, match="study.checkpoints.mine missing"):
        study.check(p)
    p["study"]["inits"].remove("mine")
    with pytest.raises(ValueError, match="recipes.mine defines an initialization that study.inits lacks"):
        study.check(p)


def test_paper_scale_takes_a_release_file_per_model_size(tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    profile.apply("paper", tmp_path / "params.yaml", REPO / "profiles")
    monkeypatch.chdir(tmp_path)
    for size, name in (("main", "b.pth"), ("vit_large", "l.pth")):
        cfg = config.load("params.yaml", size)
        mae_release(tmp_path / name, cfg.model.backbone, cheap=True, **backbone_kwargs(cfg))
    before = (tmp_path / "params.yaml").read_text()
    assert cli("add", "mine", "--checkpoint", "b.pth") == 2  # ViT-L has no file
    assert "names no file for experiment 'vit_large' (vit_large)" in capsys.readouterr().err
    assert cli("add", "mine", "--checkpoint", "main=l.pth", "--checkpoint", "vit_large=b.pth") == 2
    assert "'main' (vit_base): l.pth: checkpoint has 24 blocks" in capsys.readouterr().err
    assert (tmp_path / "params.yaml").read_text() == before
    assert cli("add", "mine", "--checkpoint", "main=b.pth", "--checkpoint", "vit_large=l.pth") == 0
    out = capsys.readouterr().out
    assert "main: b.pth: format mae" in out and "vit_large: l.pth: format mae" in out
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert p["study"]["checkpoints"]["mine"] == {"file": {"main": "b.pth", "vit_large": "l.pth"}, "format": "mae"}
    assert study.release_files(p, "mine") == {"vit_base": "b.pth", "vit_large": "l.pth"}
    assert "init.checkpoint=inits/mine/vit_large/checkpoint.pth" in study.run_sets(p, "mine", "vit_large")


def test_report_puts_user_inits_after_the_paper_and_pairs_seeds_with_random(micro: Path) -> None:
    from test_report import fake_run, fake_study

    assert cli("add", "mine", "--checkpoint", "mine.pth") == 0
    p = yaml.safe_load((micro / "params.yaml").read_text())
    p["study"]["inits"] = ["mine", *(i for i in p["study"]["inits"] if i != "mine")]  # the report orders them
    p["study"]["seeds"] = [0, 1, 2]
    p["study"]["paired"]["seeds"] = []
    fake_study(micro, p)
    diffs = {0: 0.01, 1: 0.03, 2: 0.08}
    for run in study.runs(p)["main"]:
        if run.init in ("random", "mine"):
            fake_run(micro, run, 0.2 + 0.02 * run.seed + (diffs[run.seed] if run.init == "mine" else 0), run.epochs)
    summary = collect.collect(p, micro)
    order = ["random", "supervised", "mocov3", "beit", "mae", "mine"]
    assert list(summary["main"]) == ["mine", *order[:-1]] and config.init_order(summary["main"]) == order
    paired = summary["main"]["mine"]["bbox/AP_vs_random"]
    half = 4.302652729911275 * 0.0360555127546399 / 3**0.5  # t(0.975, 2) x stdev(.01, .03, .08) / sqrt(3)
    assert paired["mean"] == pytest.approx(0.04) and paired["seeds"] == [0, 1, 2]
    assert paired["ci95"] == pytest.approx([0.04 - half, 0.04 + half])
    assert "bbox/AP_vs_random" not in summary["main"]["random"]
    assert set(summary["tide"]) == set(order) and "mine" in summary["convergence"]
    assert len(summary["convergence"]["mine"]) == len(p["study"]["schedules"])  # the sweep's lengths
    frames = tables.tables(summary)
    t1 = frames["table1_main"]
    assert list(t1["init"]) == order
    col = f"box − random at {p['study']['paired']['epochs']:g} epochs (paired, 95% CI)"
    assert t1.set_index("init").loc["mine", col] == (
        f"+4.0 [{100 * (0.04 - half):+.1f}, {100 * (0.04 + half):+.1f}] (not separable from random; n = 3)"
    )
    assert list(dict.fromkeys(frames["figure2_convergence"]["init"]))[:6] == order
    assert list(frames["figure4_tide"]["init"]) == list(summary["tide"])
    fig = figures.main_results(summary)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == order
    for draw in (figures.convergence, figures.tide):
        fig = draw(summary)
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == order, draw.__name__


# -- the DAG: tests/test_pipeline.py's finished micro study, then `add`: only its stages (and check, report) run --
def add_reproduce_remove(root: Path) -> None:
    """On the finished micro study at `root` (every stage up to date): add an initialization, reproduce,
    remove it, reproduce (tests/test_pipeline.py calls this at the end of its micro DAG test)."""

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)

    cfg = config.load(root / "params.yaml", "main")
    mae_release(root / "mine.pth", cfg.model.backbone, **cfg.model.overrides)
    r = run(sys.executable, "-m", "studylib.inits", "add", "mine", "--checkpoint", "mine.pth")
    assert r.returncode == 0, r.stderr
    ours = {"check", "init@mine", "main@mine-main-1-0", "report"}
    assert f"the next `dvc repro` runs {len(ours)} stage(s): {', '.join(sorted(ours))}" in r.stdout, r.stdout
    r = run("dvc", "repro")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran = {ln.split("'")[1] for ln in r.stdout.splitlines() if ln.startswith("Running stage '")}
    assert ran == ours, r.stdout  # nothing of the other initializations
    summary = json.loads((root / "results/summary.json").read_text())
    assert "mine" in summary["main"] and summary["main"]["mine"]["bbox/AP_vs_random"]["seeds"] == [0]
    assert "mine" in summary["tide"] and len(summary["convergence"]["mine"]) == 1  # the micro sweep's one length
    rows = (root / "results/tables/table1_main.md").read_text().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["random", "supervised", "mocov3", "beit", "mae", "mine"]

    r = run(sys.executable, "-m", "studylib.inits", "remove", "mine")
    assert r.returncode == 0 and "runs 2 stage(s): check, report" in r.stdout, r.stdout + r.stderr
    for leftover in [root / "inits/mine", *root.glob("runs/*/mine-*"), *root.glob("results/notebooks/*/mine*")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()  # `remove` leaves its runs on disk
    assert run("dvc", "repro").returncode == 0  # the report, without them (it depends on runs/main, ...)
    assert "mine" not in json.loads((root / "results/summary.json").read_text())["main"]
    assert "up to date" in run("dvc", "status").stdout  # the study as it was: later tests share it
