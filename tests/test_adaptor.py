"""The multi-scale adaptor: every ablation combination runs forward/backward; strides and shapes; bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from torchvision.ops.misc import Conv2dNormActivation

from studylib.models.adaptor import KINDS, build_adaptor, num_groups
from studylib.models.vit import ViT

ATTENTION = {  # name -> ViT keywords
    "window": dict(global_blocks=()),
    "hybrid": dict(),  # one global block per d/4 subset (the paper)
    "global": dict(window_size=0),
}


def tiny_vit(
    attention: str = "hybrid",
    use_abs_pos: bool = True,
    use_rel_pos: bool = True,
    img_size: int = 64,
    patch_size: int = 8,
) -> ViT:
    kw = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=4,
        num_heads=2,
        window_size=4,
        pretrain_img_size=4 * patch_size,
        use_abs_pos=use_abs_pos,
        use_rel_pos=use_rel_pos,
    )
    return ViT(**{**kw, **ATTENTION[attention]})


@pytest.mark.parametrize(
    "attention,abs_pos,rel_pos,kind", list(itertools.product(ATTENTION, (True, False), (True, False), KINDS))
)
def test_forward_backward_every_combination(attention, abs_pos, rel_pos, kind):
    torch.manual_seed(0)
    adaptor = build_adaptor(tiny_vit(attention, abs_pos, rel_pos), kind=kind, out_channels=16).train()
    images = torch.randn(2, 3, 64, 64)
    feats = adaptor(images)

    expected = adaptor.featmap_names + (["pool"] if "pool" in adaptor.strides else [])
    assert list(feats) == expected
    assert set(adaptor.strides) == set(expected)
    for name, x in feats.items():
        assert x.shape == (2, 16, 64 // adaptor.strides[name], 64 // adaptor.strides[name]), name
        assert torch.isfinite(x).all()

    loss = sum((x * torch.randn_like(x)).sum() for x in feats.values())
    loss.backward()
    missing = [n for n, p in adaptor.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    # the positional parts exist exactly when asked for
    assert (adaptor.vit.pos_embed is not None) == abs_pos
    has_rel = adaptor.vit.rel_pos_window is not None or adaptor.vit.rel_pos_global is not None
    assert has_rel == rel_pos


@pytest.mark.parametrize("kind", KINDS)
def test_strides_and_shapes_at_paper_resolution(kind):
    torch.manual_seed(0)
    vit = ViT(img_size=1024, patch_size=16, embed_dim=32, depth=4, num_heads=2, window_size=14, pretrain_img_size=224)
    adaptor = build_adaptor(vit, kind=kind, out_channels=8).eval()
    with torch.no_grad():
        feats = adaptor(torch.randn(1, 3, 1024, 1024))
    sizes = {name: tuple(x.shape[-2:]) for name, x in feats.items()}
    if kind == "single":
        assert adaptor.strides == {"0": 16}
        assert sizes == {"0": (64, 64)}
    else:
        assert adaptor.strides == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
        assert sizes == {"0": (256, 256), "1": (128, 128), "2": (64, 64), "3": (32, 32), "pool": (16, 16)}
    assert all(x.shape[1] == adaptor.out_channels == 8 for x in feats.values())


def test_multiscale_modules_are_the_papers():
    adaptor = build_adaptor(tiny_vit(), kind="multiscale", out_channels=16)
    C = adaptor.vit.embed_dim
    x4 = [type(m) for m in adaptor.scale4]
    assert x4 == [nn.ConvTranspose2d, nn.GroupNorm, nn.GELU, nn.ConvTranspose2d]
    assert isinstance(adaptor.scale2, nn.ConvTranspose2d)  # one deconv, no norm, no activation
    assert isinstance(adaptor.scale1, nn.Identity)
    assert isinstance(adaptor.scale05, nn.MaxPool2d) and adaptor.scale05.kernel_size == 2
    for deconv in (adaptor.scale4[0], adaptor.scale4[3], adaptor.scale2):  # keeps the ViT width
        assert (deconv.in_channels, deconv.out_channels, deconv.kernel_size, deconv.stride) == (C, C, (2, 2), (2, 2))
    assert adaptor.scale4[1].num_groups == num_groups(C)
    assert adaptor.featmap_names == ["0", "1", "2", "3"]


def test_single_scale_uses_only_the_last_block():
    vit = tiny_vit()
    adaptor = build_adaptor(vit, kind="single", out_channels=16).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = adaptor(images)
        # changing the last block changes the output; the single level is the last block's map
        before = feats["0"].clone()
        nn.init.normal_(vit.blocks[-1].mlp.fc2.weight)
        after = adaptor(images)["0"]
    assert list(feats) == ["0"] and adaptor.featmap_names == ["0"]
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(
    "norm,layer", [("bn", nn.BatchNorm2d), ("syncbn", nn.SyncBatchNorm), ("gn", nn.GroupNorm), ("none", None)]
)
@pytest.mark.parametrize("kind", ("multiscale", "simple"))
def test_fpn_norm(norm, layer, kind):
    adaptor = build_adaptor(tiny_vit(), kind=kind, out_channels=16, norm=norm)
    neck = adaptor.fpn if kind == "multiscale" else adaptor.lateral
    convs = [m for m in neck.modules() if isinstance(m, Conv2dNormActivation)]
    assert convs
    for block in convs:
        norms = [m for m in block if not isinstance(m, nn.Conv2d)]
        if layer is None:
            assert norms == [] and block[0].bias is not None
        else:
            assert len(norms) == 1 and type(norms[0]) is layer and block[0].bias is None
    out = adaptor.train()(torch.randn(2, 3, 64, 64))  # syncbn runs as plain BN outside a process group
    assert all(torch.isfinite(x).all() for x in out.values())


def test_bn_converts_to_syncbn():
    adaptor = nn.SyncBatchNorm.convert_sync_batchnorm(build_adaptor(tiny_vit(), out_channels=16, norm="bn"))
    kinds = {type(m) for m in adaptor.fpn.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds


def test_num_groups():
    assert num_groups(768) == 32
    assert num_groups(32) == 32
    assert num_groups(48) == 24
    assert num_groups(36) == 18
    assert num_groups(7) == 7


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="pyramid"), "unknown adaptor kind 'pyramid'; allowed: multiscale, single, simple"),
        (dict(norm="ln"), "unknown norm 'ln'; allowed: bn, syncbn, gn, none"),
        (dict(out_channels=0), "out_channels=0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_adaptor(tiny_vit(), **kwargs)


def test_patch_size_must_allow_x4_upsampling():
    vit = ViT(img_size=36, patch_size=6, embed_dim=32, depth=4, num_heads=2, window_size=3, pretrain_img_size=18)
    with pytest.raises(ValueError, match="patch_size=6"):
        build_adaptor(vit, kind="multiscale")
    assert build_adaptor(vit, kind="single").strides == {"0": 6}
