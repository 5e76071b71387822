"""Table 5's counters: FLOPs / activations of known layers, and timings taken at the run's thread count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from studylib import complexity, config

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


def _model(cfg):
    from studylib.engine.build import build_datasets, build_model

    _, val = build_datasets(cfg)
    return build_model(cfg, val.dataset.num_classes if hasattr(val, "dataset") else val.num_classes)
