"""BEiT-style masked image modelling (Bao et al. 2021): blockwise masking of ~40% of the patches and
prediction of the discrete visual tokens of the masked patches.

The one substitution: BEiT's tokenizer is the DALL·E dVAE (8192 tokens, trained on 250M images);
here it is a k-means codebook (`num_tokens`, default 128) over per-patch normalized pixels, fit
deterministically on augmented views of the pre-training corpus before step 0. A patch's token
is its nearest centroid. It is saved as `<stem>.tokenizer.pth` next to the checkpoint.

The model is timm's `Beit` in BEiT's default pre-training configuration (no absolute position
embedding, one relative position bias shared by all blocks, layer scale 0.1), plus `mask_token`
and `lm_head`, so its keys are those of BEiT's release: {'model': {cls_token, mask_token,
patch_embed.proj, rel_pos_bias.relative_position_bias_table, blocks.i.{gamma_1, gamma_2,
attn.qkv.weight, attn.q_bias, attn.v_bias, ...}, norm, lm_head}}.

References: microsoft/unilm beit/modeling_pretrain.py, masking_generator.py, run_beit_pretraining.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.beit import Beit
from torchvision.transforms import v2

from .common import ImageFolder, Task, atomic_save, normalize, normalize_patches, patchify, read_image
from .config import PretrainConfig


# -- blockwise masking -----------------------------------------------------------------------------
def blockwise_mask(
    height: int, width: int, num_masking_patches: int, min_num_patches: int = 4, min_aspect: float = 0.3
) -> torch.Tensor:
    """(height, width) bool mask of about `num_masking_patches` patches, made of random rectangles.

    Each block has an area in [min_num_patches, remaining] and an aspect ratio log-uniform in
    [min_aspect, 1/min_aspect]; blocks are added until the target is reached or 10 tries in a
    row add nothing. Never masks more than the target. Draws from the global torch RNG.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masking_patches:
        remaining = num_masking_patches - count
        delta = 0
        for _ in range(10):
            area = torch.empty(()).uniform_(min_num_patches, max(min_num_patches, remaining)).item()
            aspect = math.exp(torch.empty(()).uniform_(*log_aspect).item())
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= remaining:
                    mask[top : top + h, left : left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


# -- the tokenizer ------------------------------------------------------------------------------------
class PatchKMeansTokenizer(nn.Module):
    """Discrete visual tokens: index of the nearest k-means centroid of each per-patch normalized patch."""

    def __init__(self, num_tokens: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer("codebook", torch.zeros(num_tokens, patch_size * patch_size * 3))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_patches(patchify(images, self.patch_size))

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...) index of the nearest centroid (squared Euclidean)."""
        flat = x.reshape(-1, x.shape[-1])
        d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + (self.codebook**2).sum(1)
        return d.argmin(1).reshape(x.shape[:-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N) long token ids."""
        return self.assign(self.features(images))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, iters: int, seed: int) -> float:
        """Lloyd's k-means on (M, D) features, seeded; returns the final mean squared distance.

        Hand-written: scikit-learn is not a dependency and Lloyd's algorithm is a few lines in torch.
        """
        k = self.codebook.shape[0]
        if x.shape[0] < k:
            raise ValueError(f"tokenizer: {x.shape[0]} patches for num_tokens={k}; use more tokenizer_images")
        g = torch.Generator().manual_seed(seed)
        centers = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
        for _ in range(iters):
            self.codebook.copy_(centers)
            ids = self.assign(x)
            sums = torch.zeros_like(centers).index_add_(0, ids, x)
            counts = torch.bincount(ids, minlength=k)
            centers = sums / counts.clamp(min=1)[:, None]
            empty = (counts == 0).nonzero().flatten()
            if len(empty):  # re-seed empty clusters with the worst-fit points, deterministically
                err = ((x - self.codebook[ids]) ** 2).sum(1)
                centers[empty] = x[err.topk(len(empty)).indices]
        self.codebook.copy_(centers)
        return float(((x - self.codebook[self.assign(x)]) ** 2).sum(1).mean())


# -- the model ------------------------------------------------------------------------------------
class BEiTPretrain(nn.Module):
    """timm `Beit` (+ mask_token, lm_head) and the tokenizer; `forward((images, mask), progress)` -> loss."""

    def __init__(self, beit: Beit, tokenizer: PatchKMeansTokenizer):
        super().__init__()
        dim = beit.embed_dim
        beit.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        beit.lm_head = nn.Linear(dim, tokenizer.codebook.shape[0])
        trunc_normal_(beit.mask_token, std=0.02)
        trunc_normal_(beit.lm_head.weight, std=0.02)
        nn.init.zeros_(beit.lm_head.bias)
        self.beit, self.tokenizer = beit, tokenizer

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        images, mask = batch  # mask: (B, N) bool, True = masked
        targets = self.tokenizer(images)[mask]
        net = self.beit
        x = net.patch_embed(images)
        w = mask.unsqueeze(-1).type_as(x)
        x = x * (1 - w) + net.mask_token.expand_as(x) * w
        x = net.pos_drop(torch.cat([net.cls_token.expand(x.shape[0], -1, -1), x], dim=1))
        rel_pos_bias = net.rel_pos_bias()
        for blk in net.blocks:
            x = blk(x, shared_rel_pos_bias=rel_pos_bias)
        x = net.norm(x)[:, 1:]
        return F.cross_entropy(net.lm_head(x[mask]), targets)


class MaskedView:
    """An augmented view and its blockwise mask (flattened, row-major)."""

    def __init__(self, view: v2.Transform, grid: int, num_masking_patches: int, min_num_patches: int):
        self.view, self.grid, self.n, self.min_n = view, grid, num_masking_patches, min_num_patches

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(image), blockwise_mask(self.grid, self.grid, self.n, self.min_n).flatten()


def view_transform(cfg: PretrainConfig) -> v2.Transform:
    """BEiT's augmentation: color jitter 0.4, flip, random resized crop."""
    return v2.Compose(
        [
            v2.ColorJitter(0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(
                cfg.img_size,
                scale=(cfg.min_crop_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            normalize(),
        ]
    )


def build(cfg: PretrainConfig, image_dir: str | Path, ann_file: str | Path | None = None) -> Task:
    enc = cfg.encoder_kwargs()
    grid = cfg.img_size // enc["patch_size"]
    beit = Beit(
        img_size=cfg.img_size,
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        use_abs_pos_emb=False,
        use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True,
        init_values=cfg.layer_scale_init,
        drop_path_rate=cfg.drop_path_rate,
    )
    tokenizer = PatchKMeansTokenizer(cfg.num_tokens, enc["patch_size"])
    model = BEiTPretrain(beit, tokenizer)
    view = view_transform(cfg)
    dataset = ImageFolder(image_dir, MaskedView(view, grid, round(cfg.mask_ratio * grid * grid), cfg.min_mask_patches))
    extra: dict = {
        "mask_ratio": cfg.mask_ratio,
        "num_tokens": cfg.num_tokens,
        "tokenizer": "k-means codebook over per-patch normalized pixels (substitutes the DALL-E dVAE)",
    }

    def prepare() -> None:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + 1)
            n = len(dataset.files)
            views = torch.stack([view(read_image(dataset.files[i % n])) for i in range(cfg.tokenizer_images)])
        extra["tokenizer_mse"] = tokenizer.fit(tokenizer.features(views).flatten(0, 1), cfg.kmeans_iters, cfg.seed)

    def release(step: int, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": beit.state_dict()}

    def write_extras(checkpoint: Path) -> dict[str, str]:
        path = checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + ".tokenizer.pth")
        atomic_save(
            {
                "codebook": tokenizer.codebook.clone(),
                "patch_size": enc["patch_size"],
                "img_size": cfg.img_size,
                "features": "ImageNet-normalized RGB, patchified (row, col, "
                "channel), then each patch to zero mean / unit variance",
            },
            path,
        )
        return {"tokenizer_file": str(path)}

    return Task(
        model,
        dataset,
        release,
        no_weight_decay=("*cls_token", "*mask_token", "*relative_position_bias_table"),
        prepare=prepare,
        write_extras=write_extras,
        extra=extra,
    )
