"""ViT trunks from ``MODEL.VIT``: timm's for pre-training, Detectron2's ViTDet for fine-tuning.

Both read the same sizes, so a local-global checkpoint exported by ``tools/convert_weights.py``
loads into the ViTDet backbone tensor for tensor. The ViTDet builder is registered in
Detectron2's ``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME: "build_vitdet_backbone"``): upstream
configures ViTDet with LazyConfig only, this makes it reachable from YAML.
"""
import math
from functools import partial

import timm
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT
from torch import nn

__all__ = ["build_timm_vit", "vit_name", "vit_sizes", "build_vitdet_backbone"]

# the timm architecture whose constructor builds every size (sizes are passed explicitly)
_TIMM_ARCH = "vit_small_patch16_224"
# the usual names of the ViT widths (Dosovitskiy et al.; DeiT's Ti and S)
_VIT_WIDTHS = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H"}


def vit_name(embed_dim: int, patch_size: int) -> str:
    """"ViT-S/16" for width 384 and patch 16; other widths as "ViT-w<width>/<patch>"."""
    return f"ViT-{_VIT_WIDTHS.get(embed_dim, f'w{embed_dim}')}/{patch_size}"


def vit_sizes(cfg) -> dict:
    """The trunk sizes of ``cfg.MODEL.VIT`` as keyword arguments shared by timm and Detectron2."""
    c = cfg.MODEL.VIT
    return {
        "patch_size": c.PATCH_SIZE,
        "embed_dim": c.EMBED_DIM,
        "depth": c.DEPTH,
        "num_heads": c.NUM_HEADS,
        "mlp_ratio": c.MLP_RATIO,
    }


def build_timm_vit(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm ViT with a CLS token and no classifier, for any input size.

    Args:
        img_size: side its position embeddings are sized for (the global crop).
        patch_size, embed_dim, depth, num_heads, mlp_ratio: the trunk's sizes.
        drop_path_rate: stochastic depth at the last block.

    Returns:
        ``timm.models.VisionTransformer``; ``forward_features(x)`` maps (N, 3, S, S) to
        (N, 1 + (S / patch_size)^2, embed_dim) tokens, CLS first (other S interpolate the
        position embeddings).
    """
    return timm.create_model(
        _TIMM_ARCH,
        pretrained=False,
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
        num_classes=0,
        dynamic_img_size=True,
    )


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """ViTDet: Detectron2's plain ViT with a SimpleFeaturePyramid (p2-p6), from ``MODEL.VIT``.

    The pre-trained names are ``backbone.net.*`` (what ``tools/convert_weights.py`` writes for a
    ViT); relative position biases and the pyramid are new.

    Args:
        cfg: config with ``MODEL.VIT`` and ``MODEL.FPN.OUT_CHANNELS``.
        input_shape: image channels.

    Returns:
        the backbone; its output features are p2 .. p6 for ViTDet's patch 16 and scale factors
        (4, 2, 1, 0.5), one level per factor plus a max-pooled one in general.
    """
    c = cfg.MODEL.VIT
    net = ViT(
        img_size=c.IMG_SIZE,
        in_chans=input_shape.channels,
        drop_path_rate=c.DROP_PATH_RATE,
        # timm's ViT (the pre-trainer) uses eps 1e-6, as ViTDet's own configs
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_size=c.WINDOW_SIZE,
        window_block_indexes=list(c.WINDOW_BLOCK_INDEXES),
        use_rel_pos=c.USE_REL_POS,
        pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
        **vit_sizes(cfg),
    )
    # the extra max-pooled level comes from the pyramid's coarsest level (p5 at patch 16 with
    # ViTDet's scale factors; p4 for a patch-8 CPU trunk with factors 2, 1, 0.5)
    top_block = LastLevelMaxPool()
    coarsest = c.PATCH_SIZE / min(c.SCALE_FACTORS)
    top_block.in_feature = f"p{int(math.log2(coarsest))}"
    return SimpleFeaturePyramid(
        net=net,
        in_feature="last_feat",
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=tuple(c.SCALE_FACTORS),
        top_block=top_block,
        norm="LN",
        square_pad=c.IMG_SIZE,
    )
