"""AdamW with the paper's parameter groups, and ViTDet's optional layer-wise lr decay.

Weight decay applies to weights only: norms, biases (every 1-D parameter), the absolute position
embedding and the relative position bias tables (`ViT.no_weight_decay()`) get none. With
`layer_decay` (ViTDet's addition, off in the paper) block i of a depth-d ViT trains at
lr x layer_decay^(d - i), the patch embedding and absolute position embedding at layer_decay^(d + 1),
and everything else (the shared relative position tables, adaptor, FPN and heads) at the full lr.

Grouping is timm's (`param_groups_weight_decay`, `param_groups_layer_decay`); timm leaves the
`lr_scale` of a group to its own schedulers, so `build_optimizer` multiplies it in here.

References: timm optim/_param_groups.py; BEiT optim_factory.py; detectron2 get_vit_lr_decay_rate.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from ..models.vit import ViT


def find_vit(model: nn.Module) -> tuple[str, ViT] | None:
    """The (qualified name prefix, module) of the one `ViT` inside `model`, or None (ResNet baseline)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, ViT)]
    if len(found) > 1:
        raise ValueError(f"model holds {len(found)} ViTs ({[n for n, _ in found]}); expected at most one")
    if not found:
        return None
    name, vit = found[0]
    return (f"{name}." if name else ""), vit


class _LayerView(nn.Module):
    """The detector's parameters with the ViT's under their own names (`blocks.3.mlp.fc1.weight`).

    timm's groupers match parameter names against the ViT's layout (`group_matcher`,
    `no_weight_decay`); inside the detector those names carry a prefix, so this view strips it.
    Parameters outside the ViT keep their (prefixed) names and fall in the last layer (scale 1).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        found = find_vit(model)
        self._model = [model]  # a list: not registered as a child, so no second parameter listing
        self.prefix, self.vit = found if found else ("\0", None)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self._model[0].named_parameters():
            yield (name[len(self.prefix) :] if name.startswith(self.prefix) else name), p

    def group_matcher(self, coarse: bool = False) -> dict:
        # stem = layer 0, blocks.i = layer i + 1; the rest is unmatched -> the top layer (scale 1)
        return {"stem": r"^patch_embed|^pos_embed", "blocks": r"^blocks\.(\d+)"}

    def no_weight_decay(self) -> set[str]:
        return set(self.vit.no_weight_decay()) if self.vit is not None else set()


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups: `params`, `weight_decay`, `lr_scale` and `names` (for logs and tests)."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"train.layer_decay = {layer_decay} must be in (0, 1] (or null for none)")
    view = _LayerView(model)
    if layer_decay is not None and view.vit is None:
        raise ValueError("train.layer_decay needs a ViT backbone (the ResNet baseline has no blocks)")
    no_wd = view.no_weight_decay()
    if layer_decay is None:
        groups = param_groups_weight_decay(view, weight_decay, no_weight_decay_list=no_wd)
        for g in groups:
            g["lr_scale"] = 1.0
    else:
        groups = param_groups_layer_decay(view, weight_decay, no_weight_decay_list=no_wd, layer_decay=layer_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        g["names"] = [names[id(p)] for p in g["params"]]
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`, each group at lr x its `lr_scale` (no gradient clipping: the paper uses none)."""
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr = {lr} must be > 0 and weight_decay = {weight_decay} >= 0")
    groups = param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def effective_lr(lr: float, lr_mult: float, global_batch: int, base_batch_size: int) -> float:
    """The linear scaling rule: lr x lr_mult x global_batch / base_batch_size."""
    if base_batch_size < 1:
        raise ValueError(f"train.base_batch_size = {base_batch_size} must be >= 1")
    return lr * lr_mult * global_batch / base_batch_size
