"""The C4 box head of the MoCo detection protocol: Detectron2's Res5ROIHeads plus a norm after res5.

MoCo (He et al., 2020, appendix) fine-tunes Faster / Mask R-CNN R50-C4 with a BN layer after the
res5 head, which Detectron2's ``Res5ROIHeads`` lacks; its ``detection/train_net.py`` registers the
same head under the same name, so MoCo-style configs read unchanged. The res5 stage also follows
the trunk's block type, so a ResNet-18/34 trunk (basic blocks) fine-tunes as C4 on the CPU.
"""
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

__all__ = ["Res5ROIHeadsExtraNorm"]

# res5 blocks of the basic-block depths (the bottleneck depths use Detectron2's own builder)
_BASIC_RES5_BLOCKS = {18: 2, 34: 3}


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with ``MODEL.RESNETS.NORM`` after the res5 stage (MoCo's C4 head)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        depth = cfg.MODEL.RESNETS.DEPTH
        if depth in _BASIC_RES5_BLOCKS:
            # res4 of a basic-block trunk has RES2_OUT_CHANNELS * 4 channels, res5 twice that
            out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            num_blocks = _BASIC_RES5_BLOCKS[depth]
            blocks = ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[2] + [1] * (num_blocks - 1),
                in_channels=out_channels // 2,
                out_channels=out_channels,
                norm=cfg.MODEL.RESNETS.NORM,
            )
            seq = nn.Sequential(*blocks)
        else:
            seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels
