"""Mask R-CNN with the paper's heads: training step, inference at original size, fixed-square transform,
head structure, RoIAlign levels and the ResNet-FPN baseline against torchvision's v2 model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.ops.misc import Conv2dNormActivation

from studylib.models.adaptor import build_adaptor
from studylib.models.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FixedSizeTransform,
    build_mask_rcnn,
    build_resnet_fpn_backbone,
    default_anchor_sizes,
    roi_align,
)
from studylib.models.vit import ViT

IMG = 64
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def tiny_vit(img_size: int = IMG, patch_size: int = 8) -> ViT:
    return ViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=4,
        num_heads=2,
        window_size=4,
        pretrain_img_size=4 * patch_size,
    )


def tiny_model(kind: str = "multiscale", **kwargs) -> torchvision.models.detection.MaskRCNN:
    torch.manual_seed(0)
    backbone = build_adaptor(tiny_vit(), kind=kind, out_channels=16)
    return build_mask_rcnn(backbone, num_classes=3, img_size=IMG, head_width=16, fc_dim=32, **kwargs)


def target(h: int, w: int, boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0) : int(y1), int(x0) : int(x1)] = 1
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": masks}


@pytest.mark.parametrize("kind", ("multiscale", "single", "simple"))
def test_training_step_losses_and_gradients(kind):
    model = tiny_model(kind).train()
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]  # LSJ output: each side <= img_size
    targets = [target(64, 48, [[2, 3, 30, 40], [10, 10, 40, 30]], [1, 2]), target(40, 64, [[5, 5, 60, 35]], [2])]
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    # every parameter takes part in training (ViT, adaptor, FPN, RPN, box and mask heads)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_eval_outputs_at_original_image_size():
    model = tiny_model(box_score_thresh=0.0).eval()
    sizes = [(100, 60), (30, 50)]
    with torch.no_grad():
        outputs = model([torch.rand(3, h, w) for h, w in sizes])
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, sizes):
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        n = len(out["boxes"])
        assert n > 0
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
        assert out["masks"].shape == (n, 1, h, w)
        eps = 1e-3  # boxes clipped to the resized image map back to the border up to float error
        assert (out["boxes"][:, [0, 2]] <= w + eps).all() and (out["boxes"][:, [1, 3]] <= h + eps).all()
        assert (out["boxes"] >= 0).all()
        assert set(out["labels"].tolist()) <= {1, 2}
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()


def test_transform_eval_resizes_longest_side_and_pads_to_square():
    t = FixedSizeTransform(IMG).eval()
    image = torch.rand(3, 100, 60)
    boxes = torch.tensor([[6.0, 10.0, 30.0, 50.0]])
    batch, targets = t([image], [{"boxes": boxes.clone(), "masks": torch.ones(1, 100, 60, dtype=torch.uint8)}])
    assert batch.image_sizes == [(IMG, round(0.6 * IMG))]
    assert batch.tensors.shape == (1, 3, IMG, IMG)
    assert (batch.tensors[0, :, :, round(0.6 * IMG) :] == 0).all()  # padding on the right
    assert targets[0]["masks"].shape == (1, IMG, round(0.6 * IMG))
    torch.testing.assert_close(targets[0]["boxes"], boxes * torch.tensor([38 / 60, 64 / 100] * 2))
    # landscape: the width is the longest side
    assert t([torch.rand(3, 60, 100)])[0].image_sizes == [(round(0.6 * IMG), IMG)]
    # postprocess maps predictions back to the original image
    pred = [{"boxes": torch.tensor([[0.0, 0.0, 38.0, 64.0]]), "masks": torch.ones(1, 1, 28, 28)}]
    out = t.postprocess(pred, batch.image_sizes, [(100, 60)])
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.0, 0.0, 60.0, 100.0]]))
    assert out[0]["masks"].shape == (1, 1, 100, 60)


def test_transform_train_only_normalizes_and_pads():
    t = FixedSizeTransform(IMG).train()
    image = torch.rand(3, 50, 40)
    tgt = target(50, 40, [[1, 2, 20, 30]], [1])
    batch, targets = t([image], [dict(tgt)])
    assert batch.image_sizes == [(50, 40)]
    assert batch.tensors.shape == (1, 3, IMG, IMG)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(batch.tensors[0, :, :50, :40], (image - mean) / std)
    assert (batch.tensors[0, :, 50:] == 0).all() and (batch.tensors[0, :, :, 40:] == 0).all()
    assert torch.equal(targets[0]["boxes"], tgt["boxes"]) and torch.equal(targets[0]["masks"], tgt["masks"])
    with pytest.raises(ValueError, match=f"65x40 exceeds img_size={IMG}"):
        t([torch.rand(3, 65, 40)], [dict(tgt)])


def test_transform_normalization_is_a_parameter():
    t = FixedSizeTransform(IMG, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)).train()
    batch, _ = t([torch.full((3, IMG, IMG), 0.75)])
    torch.testing.assert_close(batch.tensors, torch.ones(1, 3, IMG, IMG))


def test_paper_heads_structure():
    model = build_mask_rcnn(build_adaptor(tiny_vit(1024, 16), out_channels=256), num_classes=81, img_size=1024)
    assert isinstance(model.transform, FixedSizeTransform) and model.transform.img_size == 1024
    # FPN with BatchNorm
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.fpn.modules())
    # 2-conv RPN head, 3 anchors per location, anchors 32..512 on P2..P6
    rpn_convs = [m for m in model.rpn.head.conv.modules() if isinstance(m, nn.Conv2d)]
    assert len(rpn_convs) == 2 and all(c.kernel_size == (3, 3) for c in rpn_convs)
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert model.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert model.rpn.head.cls_logits.out_channels == 3
    # 4conv+1fc box head with BN
    box = model.roi_heads.box_head
    blocks = [m for m in box if isinstance(m, Conv2dNormActivation)]
    assert len(blocks) == 4 and all(isinstance(b[1], nn.BatchNorm2d) and b[0].out_channels == 256 for b in blocks)
    fcs = [m for m in box if isinstance(m, nn.Linear)]
    assert len(fcs) == 1 and fcs[0].out_features == 1024
    # 4-conv mask head with BN
    mask_blocks = list(model.roi_heads.mask_head)
    assert len(mask_blocks) == 4
    assert all(isinstance(b[0], nn.Conv2d) and isinstance(b[1], nn.BatchNorm2d) for b in mask_blocks)
    # 512 sampled RoIs per image; predictors sized for K + 1 classes
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 81


def test_head_widths_and_norm_are_parameters():
    model = build_mask_rcnn(
        build_adaptor(tiny_vit(), out_channels=16),
        num_classes=3,
        img_size=IMG,
        head_width=8,
        fc_dim=24,
        norm="gn",
        rois_per_image=64,
    )
    box_blocks = [m for m in model.roi_heads.box_head if isinstance(m, Conv2dNormActivation)]
    assert all(b[0].out_channels == 8 and isinstance(b[1], nn.GroupNorm) for b in box_blocks)
    assert all(isinstance(b[1], nn.GroupNorm) for b in model.roi_heads.mask_head)
    assert model.roi_heads.box_predictor.cls_score.in_features == 24
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64


def test_anchor_sizes():
    # the paper's anchors are 8x the stride of their level: 32..512 over strides 4..64 (patch 16, or ResNet)
    assert default_anchor_sizes([4, 8, 16, 32, 64]) == ((32,), (64,), (128,), (256,), (512,))
    assert default_anchor_sizes([16]) == ((32, 64, 128, 256, 512),)  # single scale: the pyramid's five sizes
    assert default_anchor_sizes([2, 4, 8, 16, 32]) == ((16,), (32,), (64,), (128,), (256,))  # patch 8
    paper = build_mask_rcnn(build_adaptor(tiny_vit(1024, 16), out_channels=16), 3, img_size=1024)
    assert paper.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert (
        build_mask_rcnn(build_resnet_fpn_backbone(50, out_channels=16), 3, img_size=1024).rpn.anchor_generator.sizes
        == paper.rpn.anchor_generator.sizes
    )
    single = build_mask_rcnn(build_adaptor(tiny_vit(1024, 16), kind="single", out_channels=16), 3, img_size=1024)
    assert single.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    # the anchors follow the strides, not the image size: patch 8 halves them at any image size
    half = build_mask_rcnn(build_adaptor(tiny_vit(128, 8), out_channels=16), 3, img_size=128)
    assert half.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert single.rpn.head.cls_logits.out_channels == 15
    assert single.roi_heads.box_roi_pool.featmap_names == ["0"]
    custom = build_mask_rcnn(
        build_adaptor(tiny_vit(), out_channels=16),
        3,
        img_size=IMG,
        anchor_sizes=((8, 12), (16, 24), (32, 48), (64, 96), (128, 192)),
    )
    assert custom.rpn.head.cls_logits.out_channels == 6
    with pytest.raises(ValueError, match="anchor_sizes has 2 levels; the backbone has 5"):
        build_mask_rcnn(build_adaptor(tiny_vit(), out_channels=16), 3, img_size=IMG, anchor_sizes=((8,), (16,)))


def test_roi_align_levels_come_from_strides_not_the_first_batch():
    backbone = build_adaptor(tiny_vit(1024, 16), out_channels=8)
    pool = roi_align(backbone, 7, canonical_scale=224)
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 1000, 1000.0]])
    assert pool.map_levels([boxes]).tolist() == [0, 2, 3, 3]  # P2, P4 (canonical), P5, P5
    # a first batch of small (jittered) images must not change the scales
    feats = {k: torch.randn(1, 8, 1024 // s, 1024 // s) for k, s in backbone.strides.items()}
    out = pool(feats, [torch.tensor([[0.0, 0.0, 50.0, 50.0]])], [(150, 120)])
    assert out.shape == (1, 8, 7, 7)
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def test_resnet50_fpn_matches_torchvision_v2():
    torch.manual_seed(0)
    ours = build_mask_rcnn(build_resnet_fpn_backbone(50, "bn"), num_classes=91, img_size=1024)
    ref = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())  # strict: torchvision's v2 weights load as they are


def test_resnet_variants():
    gn = build_resnet_fpn_backbone(50, "gn", out_channels=64)
    kinds = {type(m) for m in gn.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    assert gn.out_channels == 64 and gn.featmap_names == ["0", "1", "2", "3"]
    assert all(p.requires_grad for p in gn.parameters())  # trained from scratch: nothing frozen
    r101 = build_resnet_fpn_backbone(101)
    assert len(r101.body.layer3) == 23
    with pytest.raises(ValueError, match="unknown ResNet depth 34; allowed: 50, 101"):
        build_resnet_fpn_backbone(34)


def test_resnet_backbone_strides():
    backbone = build_resnet_fpn_backbone(50, "bn", out_channels=8).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 128, 128))
    assert {k: 128 // v.shape[-1] for k, v in feats.items()} == backbone.strides


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=1), "num_classes=1 must count the background"),
        (dict(norm="ln"), "unknown norm 'ln'; allowed: bn, syncbn, gn, none"),
        (dict(min_size=800), r"build_mask_rcnn sets \['min_size'\] itself"),
        (dict(box_batch_size_per_image=128), r"sets \['box_batch_size_per_image'\]"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(num_classes=3, img_size=IMG) | kwargs
    with pytest.raises(ValueError, match=match):
        build_mask_rcnn(build_adaptor(tiny_vit(), out_channels=16), **args)


def test_backbone_without_contract_raises():
    with pytest.raises(ValueError, match="lacks 'out_channels'"):
        build_mask_rcnn(nn.Identity(), num_classes=3, img_size=IMG)


def test_num_anchors_match_levels():
    model = tiny_model()
    levels = len(model.backbone.featmap_names) + 1
    assert len(model.rpn.anchor_generator.sizes) == levels
    assert math.isclose(model.roi_heads.box_roi_pool.scales[0], 1 / model.backbone.strides["0"])
