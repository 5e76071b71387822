"""Config: baseline ⊕ scale ⊕ experiment ⊕ overrides, validated once with helpful errors."""

from pathlib import Path

import pytest

from studylib import config

PARAMS = {
    "scale": "small",
    "baseline": {"model": {"backbone": "vit_base", "attention": "hybrid"}, "train": {"epochs": 25, "batch_size": 64}},
    "scales": {"small": {"model": {"backbone": "vit_micro"}, "train": {"batch_size": 8}}},
    "recipes": {"random": {"lr": 1.6e-4, "weight_decay": 0.2}, "mae": {"lr": 8e-5, "weight_decay": 0.1}},
    "experiments": {"attn_window_only": {"model": {"attention": "window"}}, "init_mae": {"init": {"kind": "mae"}}},
}


def test_merge_order_and_recipe():
    cfg = config.load(PARAMS, "attn_window_only", ["train.seed=3", "train.lr=1e-3"])
    assert cfg.model.backbone == "vit_micro"  # scale diff applied
    assert cfg.model.attention == "window"  # experiment diff applied
    assert cfg.train.batch_size == 8 and cfg.train.epochs == 25.0
    assert cfg.train.seed == 3 and cfg.train.lr == 1e-3  # --set wins
    assert cfg.train.weight_decay == 0.2  # random's recipe


def test_init_recipe_and_default_checkpoint_path():
    cfg = config.load(PARAMS, "init_mae")
    assert cfg.train.lr == 8e-5 and cfg.train.weight_decay == 0.1
    assert cfg.init.checkpoint == "inits/mae/checkpoint.pth"


@pytest.mark.parametrize(
    "experiment, sets, fragment",
    [
        ("attn_windw_only", [], "did you mean attn_window_only"),
        ("attn_window_only", ["model.attention=windowed"], "allowed: window, hybrid, global"),
        ("attn_window_only", ["model.atention=window"], "did you mean attention"),
        ("attn_window_only", ["init.abs_pos=pretrained"], "allowed: pt, rand, zero, no"),
        ("attn_window_only", ["model.backbone=vit_bas"], "did you mean vit_base"),
        ("attn_window_only", ["train.lr=fast"], "train.lr = 'fast'"),
        ("attn_window_only", ["train.batch_size=2.5"], "expected int"),
        ("attn_window_only", ["lr=1"], "expected section.key=value"),
    ],
)
def test_bad_params_name_the_key_and_the_allowed_values(experiment, sets, fragment):
    with pytest.raises(ValueError, match=fragment):
        config.load(PARAMS, experiment, sets)


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(PARAMS, "attn_window_only")
    cfg.save(tmp_path / "config.yaml")
    import yaml

    again = config.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()), name=cfg.name)
    assert again == cfg


def test_repository_params_load_for_every_experiment():
    from pathlib import Path

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    for name in ["baseline", *config.experiment_names(params)]:
        cfg = config.load(params, name)
        assert cfg.train.lr > 0 and cfg.train.weight_decay >= 0


def test_params_are_yaml_1_2_like_dvc(tmp_path) -> None:
    """`dvc exp run -S` rewrites params.yaml with `rel_pos: no` unquoted: YAML 1.2 (DVC's) keeps it a string."""
    import pathlib

    text = pathlib.Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text()
    assert 'rel_pos: "no"' in text
    (tmp_path / "params.yaml").write_text(text.replace('rel_pos: "no"', "rel_pos: no"))
    assert config.load(tmp_path / "params.yaml", "pos_abs_pt_rel_no").init.rel_pos == "no"
    assert config.load(tmp_path / "params.yaml", "main", ["init.abs_pos=no"]).init.abs_pos == "no"


def test_params_read_twice_are_independent_and_follow_the_file(tmp_path) -> None:
    """read_params memoizes the parse by content: an edit to one result never reaches the next read, and an
    edited file is read anew."""
    path = Path(__file__).resolve().parents[1] / "params.yaml"
    first = config.read_params(path)
    first["baseline"]["train"]["epochs"] = -1
    assert config.read_params(path)["baseline"]["train"]["epochs"] != -1
    (tmp_path / "params.yaml").write_text(path.read_text().replace("scale: embedded", "scale: micro", 1))
    assert config.read_params(tmp_path / "params.yaml")["scale"] == "micro"


def test_vocabularies_are_the_accepting_modules_own():
    from studylib.checkpoints.load import ALL_FORMATS, TREATMENTS
    from studylib.models.adaptor import KINDS, NORMS

    v = config.vocabularies()
    assert v["model.norm"] is NORMS and "syncbn" in NORMS and v["model.adaptor"] is KINDS
    assert v["init.abs_pos"] is TREATMENTS and v["init.format"] is ALL_FORMATS
    assert config.load(PARAMS, "attn_window_only", ["model.norm=syncbn"]).model.norm == "syncbn"
    with pytest.raises(ValueError, match="model.norm = 'sync'; allowed: bn, syncbn, gn, none"):
        config.load(PARAMS, "attn_window_only", ["model.norm=sync"])


def test_validate_checks_and_changes_nothing():
    import copy

    cfg = config.load(PARAMS, "init_mae")
    before = copy.deepcopy(cfg)
    config.validate(cfg)
    assert cfg == before
    cfg.init.checkpoint = None  # validate no longer fills it in: a non-random init without a file is an error
    with pytest.raises(ValueError, match="init.kind = 'mae' needs init.checkpoint"):
        config.validate(cfg)
    assert cfg.init.checkpoint is None
