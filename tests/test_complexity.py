"""Table 5's counters: FLOPs / activations of known layers, and timings taken at the run's thread count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from studylib import complexity, config
from studylib.report import tables

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class TwoLayers(nn.Module):
    """A 'detector' taking a list of CHW images, as torchvision's do: conv 3->4 (3x3, pad 1), then linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 5, bias=False)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv(torch.stack(images))
        return self.fc(x.flatten(1))


def test_count_image_counts_multiply_adds_twice_and_layer_outputs():
    flops, acts = complexity.count_image(TwoLayers(), torch.rand(3, 8, 8))
    conv = 2 * (3 * 3 * 3) * 4 * 8 * 8  # 2 x (kernel volume) x out channels x output positions
    fc = 2 * (4 * 8 * 8) * 5
    assert flops == conv + fc
    assert acts == 4 * 8 * 8 + 5


def test_cpu_threads_sets_and_restores():
    before = torch.get_num_threads()
    with complexity.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with complexity.cpu_threads(None):
        assert torch.get_num_threads() == before


def test_measure_runs_at_the_configs_thread_count(tmp_path):
    cfg = config.load(PARAMS, "smoke", [f"data.root={tmp_path / 'data'}", "train.threads=1"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the process default on a 2-core machine; the run asks for 1
    try:
        result = complexity.measure(cfg, num_images=2, fps_images=1, device="cpu")
        assert result["threads"] == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert result["params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in _model(cfg).parameters()))
    assert result["gflops"] > 0 and result["activations_m"] > 0 and result["fps"] > 0
    assert result["num_images"] == 2 and result["fps_images"] == 1


def test_measure_times_fps_right_after_the_counted_forwards(tmp_path, monkeypatch):
    """The counted forwards warm the model up for the fps timing: num_images + fps_images forwards, none more."""
    from studylib.engine import build

    forwards, build_model = [], build.build_model

    def counted(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: forwards.append(len(inputs[0])))
        return model

    monkeypatch.setattr(build, "build_model", counted)
    cfg = config.load(PARAMS, "smoke", [f"data.root={tmp_path / 'data'}", "train.threads=1"])
    complexity.measure(cfg, num_images=2, fps_images=1, device="cpu")
    assert forwards == [1, 1, 1]  # two counted images, one timed: one image per forward, as the paper's fps


def _model(cfg):
    from studylib.engine.build import build_datasets, build_model

    _, val = build_datasets(cfg)
    return build_model(cfg, val.dataset.num_classes if hasattr(val, "dataset") else val.num_classes)


def test_trained_weights_make_the_detection_dependent_counts_vary(tmp_path):
    """Table 5 counts a trained detector: how many boxes reach the mask head differs per image, and so do the counts."""
    from studylib import engine

    sets = [f"data.root={tmp_path / 'data'}", "train.threads=1", "data.synthetic={num_train: 8, num_val: 4}"]
    train = ["train.max_iters=40", "train.lr=0.032", "train.lr_mult=1.0"]  # as test_train's overfitting run
    engine.run(config.load(PARAMS, "smoke", sets + train), tmp_path / "run")
    cfg = config.load(PARAMS, "smoke", sets)
    trained = complexity.measure(cfg, num_images=4, fps_images=1, device="cpu", weights=tmp_path / "run")
    assert trained["weights"] == str(tmp_path / "run" / "model.pth")
    assert trained["detections_std"] > 0 and len(set(trained["gflops_per_image"])) > 1
    assert trained["gflops_std"] > 0 and trained["activations_m_std"] > 0
    assert trained["gflops"] == pytest.approx(sum(trained["gflops_per_image"]) / 4)
    assert trained["input"] == "square" and trained["input_sizes"] == [[64, 64]] * 4
    row = tables.complexity_table({"complexity": {"smoke": trained}}).iloc[0]
    assert row["weights"] == "trained" and row["input"] == "64²" and " ± " in row["detections"]
    untrained = complexity.measure(cfg, num_images=1, fps_images=1, device="cpu")
    assert untrained["weights"] is None
    with pytest.raises(ValueError, match="does not fit its detector"):
        other = config.load(PARAMS, "smoke", [*sets, "model.overrides={depth: 4, embed_dim: 32, num_heads: 2}"])
        complexity.measure(other, num_images=1, fps_images=1, device="cpu", weights=tmp_path / "run" / "model.pth")
    with pytest.raises(ValueError, match="not found"):
        complexity.measure(cfg, num_images=1, fps_images=1, device="cpu", weights=tmp_path / "nothing")


def test_resnets_run_at_the_images_own_aspect_ratio_vits_at_their_square(tmp_path):
    image = torch.rand(3, 60, 120)  # 1:2, longest side -> 128, padded to a multiple of 32 only
    sets = [f"data.root={tmp_path / 'data'}", "data.img_size=128"]
    resnet = complexity.at_own_aspect_ratio(
        _model(config.load(PARAMS, "smoke", [*sets, "model.backbone=resnet50"])), 128
    )
    vit = _model(config.load(PARAMS, "smoke", sets))
    seen = {}
    for name, model in (("resnet", resnet), ("vit", vit)):
        with complexity.backbone_inputs(model) as sizes:
            complexity.count_forward(model, image)
        seen[name] = sizes
    assert seen == {"resnet": [(64, 128)], "vit": [(128, 128)]}
