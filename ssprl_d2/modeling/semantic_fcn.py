"""The dilated-ResNet FCN of the semantic-segmentation tables, from Detectron2 parts.

DenseCL and the SS-PRL release fine-tune on VOC 2012 aug and Cityscapes with mmsegmentation's
FCN on a dilated ResNet-50 ("R50-D8", output stride 8; WXinlong/DenseCL's mmsegmentation fork,
``configs/densecl/fcn_r50-d8.py``). The same network in Detectron2's registries:

- :func:`build_resnet_dilated_backbone` (``BACKBONE_REGISTRY``): Detectron2's ``ResNet`` with res4
  and res5 at stride 1 and dilated (``MODEL.RESNETS.RES4_DILATION``, ``RES5_DILATION``: 2 and 4);
  the first block of a dilated stage runs at half the dilation, as mmsegmentation's
  ``contract_dilation`` and torchvision's ``replace_stride_with_dilation`` do. Parameter names
  are Detectron2's ResNet's, so exported trunks load as into any ResNet backbone.
- :class:`FCNHead` (``SEM_SEG_HEADS_REGISTRY``): mmsegmentation's ``FCNHead`` (``NUM_CONVS`` 3x3
  conv-norm-ReLU, the input concatenated back through one more, dropout, a 1x1 classifier) on res5,
  plus the auxiliary FCN (one conv, weight 0.4) on res4 during training.
- :class:`SlidingWindowSegmentor` (``META_ARCH_REGISTRY``): Detectron2's ``SemanticSegmentor``
  whose test pass is mmsegmentation's: logits resized to the input with the configured
  ``align_corners``, over the whole image or averaged over sliding windows (Cityscapes: 769 x 769
  windows every 513 pixels), then resized to the original size.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    SemanticSegmentor,
)
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from fvcore.nn import weight_init
from torch import nn

__all__ = [
    "DilatedBasicBlock",
    "FCNHead",
    "SlidingWindowSegmentor",
    "build_resnet_dilated_backbone",
    "sliding_windows",
    "stage_dilations",
]

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


class DilatedBasicBlock(CNNBlockBase):
    """Detectron2's ``BasicBlock`` (ResNet-18/34) with a dilated first 3x3 conv.

    As mmsegmentation's ``BasicBlock``: the first conv is dilated, the second is not. Parameter
    names equal Detectron2's ``BasicBlock`` (``conv1``, ``conv2``, ``shortcut`` with ``.norm``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1,
        norm: str = "BN",
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                   bias=False, norm=get_norm(norm, out_channels))
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride,
                            padding=dilation, dilation=dilation, bias=False,
                            norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


def stage_dilations(num_blocks: int, dilation: int) -> List[int]:
    """Dilation of each block of a stage: the first at half the stage's (contract_dilation).

    Args:
        num_blocks: blocks in the stage.
        dilation: the stage's dilation (1: not dilated).

    Returns:
        ``num_blocks`` dilations, e.g. (6, 2) -> [1, 2, 2, 2, 2, 2], (3, 4) -> [2, 4, 4].
    """
    first = dilation // 2 if dilation > 1 else 1
    return [first] + [dilation] * (num_blocks - 1)


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet with dilated res4 / res5 instead of strided ones (output stride 8).

    Reads ``MODEL.RESNETS`` as ``build_resnet_backbone`` does (depth, norm, stem and res2
    widths, ``STRIDE_IN_1X1``, ``OUT_FEATURES``) plus ``RES4_DILATION`` and ``RES5_DILATION``;
    a stage with dilation above 1 keeps its input's resolution.

    Returns:
        a :class:`ResNet` whose dilated stages have stride 1 (res5 at stride 8 for the R50-D8
        setting: dilations 2 and 4).
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH {depth} not supported; one of "
                         f"{sorted(_BLOCKS_PER_STAGE)}")
    if depth < 50 and (r.RES2_OUT_CHANNELS != 64 or r.NUM_GROUPS != 1):
        raise ValueError("ResNet-18/34 need MODEL.RESNETS.RES2_OUT_CHANNELS 64 and NUM_GROUPS 1")
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS,
                     norm=r.NORM)
    dilations = [1, 1, r.RES4_DILATION, r.RES5_DILATION]
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, (n, dilation) in enumerate(zip(_BLOCKS_PER_STAGE[depth], dilations)):
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        kwargs = dict(
            num_blocks=n,
            in_channels=in_channels,
            out_channels=out_channels,
            norm=r.NORM,
            stride_per_block=[first_stride] + [1] * (n - 1),
            dilation_per_block=stage_dilations(n, dilation),
        )
        if depth < 50:
            stages.append(ResNet.make_stage(DilatedBasicBlock, **kwargs))
        else:
            stages.append(ResNet.make_stage(
                BottleneckBlock, bottleneck_channels=bottleneck, stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=r.NUM_GROUPS, **kwargs))
        in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> Conv2d:
    conv = Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not norm,
                  norm=get_norm(norm, out_channels), activation=F.relu)
    weight_init.c2_msra_fill(conv)
    return conv


class _FCN(nn.Module):
    """mmsegmentation's FCN decode head on one feature map: convs, optional concat, classifier."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, concat_input: bool,
                 dropout: float, num_classes: int, norm: str):
        super().__init__()
        convs = [_conv_norm_relu(in_channels if i == 0 else channels, channels, norm)
                 for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = (_conv_norm_relu(in_channels + channels, channels, norm)
                         if concat_input else None)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.01)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.predictor(self.dropout(out))


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(nn.Module):
    """mmsegmentation's ``FCNHead`` on one backbone feature, with its auxiliary FCN.

    Training returns the losses (cross-entropy of logits resized to the label map, pixels equal
    to ``ignore_value`` without loss, averaged as ``loss_average`` says): ``loss_sem_seg`` and,
    with an auxiliary
    feature, ``loss_sem_seg_aux``. Inference returns the logits at the feature's resolution
    (:class:`SlidingWindowSegmentor` resizes them).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        conv_dims: int,
        num_convs: int,
        concat_input: bool,
        dropout: float,
        norm: str,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        align_corners: bool = False,
        aux_in_feature: str = "",
        aux_conv_dims: int = 256,
        aux_loss_weight: float = 0.4,
        loss_average: str = "all",
    ):
        """
        Args:
            input_shape: the backbone's output shapes.
            in_feature: the feature the decode head reads (R50-D8: "res5").
            num_classes: classes, background included.
            conv_dims: channels of the head's convs (mmsegmentation: 512).
            num_convs: 3x3 convs before the classifier (mmsegmentation: 2).
            concat_input: concatenate the input to the convs' output, one more conv (True).
            dropout: Dropout2d probability before the classifier (0.1).
            norm: norm of the convs ("SyncBN", "BN", "" for none).
            ignore_value: label value without loss.
            loss_weight: weight of ``loss_sem_seg``.
            align_corners: ``align_corners`` of the logits' resize to the label map.
            aux_in_feature: feature of the auxiliary FCN during training ("" for none; "res4").
            aux_conv_dims: channels of the auxiliary FCN's one conv (256).
            aux_loss_weight: weight of ``loss_sem_seg_aux`` (0.4).
            loss_average: "all": cross-entropy summed over the labelled pixels, divided by all
                pixels of the (padded) batch, ignored ones included (mmsegmentation up to 0.21,
                which DenseCL and the release ran); "valid": divided by the labelled pixels
                (Detectron2's heads, mmsegmentation's later ``avg_non_ignore``).
        """
        if loss_average not in ("all", "valid"):
            raise ValueError(f"loss_average {loss_average!r}: 'all' or 'valid'")
        super().__init__()
        self.in_feature = in_feature
        self.aux_in_feature = aux_in_feature
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.align_corners = align_corners
        self.loss_average = loss_average
        self.decode = _FCN(input_shape[in_feature].channels, conv_dims, num_convs, concat_input,
                           dropout, num_classes, norm)
        self.aux = None
        if aux_in_feature:
            self.aux = _FCN(input_shape[aux_in_feature].channels, aux_conv_dims, 1, False,
                            dropout, num_classes, norm)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        h, f = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.FCN
        if len(h.IN_FEATURES) != 1:
            raise ValueError(f"FCNHead reads one feature; MODEL.SEM_SEG_HEAD.IN_FEATURES is "
                             f"{list(h.IN_FEATURES)}")
        return {
            "input_shape": input_shape,
            "in_feature": h.IN_FEATURES[0],
            "num_classes": h.NUM_CLASSES,
            "conv_dims": h.CONVS_DIM,
            "num_convs": f.NUM_CONVS,
            "concat_input": f.CONCAT_INPUT,
            "dropout": f.DROPOUT,
            "norm": h.NORM,
            "ignore_value": h.IGNORE_VALUE,
            "loss_weight": h.LOSS_WEIGHT,
            "align_corners": f.ALIGN_CORNERS,
            "aux_in_feature": f.AUX_IN_FEATURE,
            "aux_conv_dims": f.AUX_CONVS_DIM,
            "aux_loss_weight": f.AUX_LOSS_WEIGHT,
            "loss_average": f.LOSS_AVERAGE,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N x classes x h x w) at the resolution of ``in_feature``."""
        return self.decode(features[self.in_feature])

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear",
                               align_corners=self.align_corners)
        if self.loss_average == "valid":
            return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
        total = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="sum")
        return total / targets.numel()

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """(logits, {}) in inference; (None, losses) in training (``targets``: N x H x W)."""
        logits = self.layers(features)
        if not self.training:
            return logits, {}
        losses = {"loss_sem_seg": self._loss(logits, targets) * self.loss_weight}
        if self.aux is not None:
            aux = self.aux(features[self.aux_in_feature])
            losses["loss_sem_seg_aux"] = self._loss(aux, targets) * self.aux_loss_weight
        return None, losses


def sliding_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int, int, int]]:
    """mmsegmentation's sliding windows over an image: (y1, y2, x1, x2) of each.

    Windows start every ``stride`` pixels; the last one in each direction is moved back to end at
    the border, and a window never exceeds the image (a crop larger than the image is the image).

    Args:
        height, width: image size.
        crop: window (height, width).
        stride: step (height, width).

    Returns:
        e.g. (10, 10, (6, 6), (4, 4)) -> windows over rows and columns [0, 6) and [4, 10).
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


@META_ARCH_REGISTRY.register()
class SlidingWindowSegmentor(SemanticSegmentor):
    """Detectron2's ``SemanticSegmentor`` with mmsegmentation's test pass.

    Training is ``SemanticSegmentor``'s. Each test image is normalised, the head's logits are
    resized to the network input with ``align_corners``, over the whole image or averaged over
    :func:`sliding_windows`, then resized to the image's original ``height`` x ``width``.
    """

    task = "semseg"

    @configurable
    def __init__(
        self,
        *,
        test_crop_size: Sequence[int] = (),
        test_stride: Sequence[int] = (),
        align_corners: bool = False,
        **kwargs,
    ):
        """
        Args:
            test_crop_size: sliding window (height, width); empty: the whole image at once.
            test_stride: window step (height, width), needed with ``test_crop_size``.
            align_corners: ``align_corners`` of every logit resize (Cityscapes' 769 crops: True).
            kwargs: ``SemanticSegmentor``'s (backbone, sem_seg_head, pixel_mean, pixel_std).
        """
        super().__init__(**kwargs)
        if len(test_crop_size) not in (0, 2) or len(test_stride) != len(test_crop_size):
            raise ValueError(f"test crop {list(test_crop_size)} and stride {list(test_stride)} "
                             "must both be [height, width], or both empty")
        self.test_crop_size = tuple(test_crop_size)
        self.test_stride = tuple(test_stride)
        self.align_corners = align_corners

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            test_crop_size=list(cfg.MODEL.FCN.TEST_CROP_SIZE),
            test_stride=list(cfg.MODEL.FCN.TEST_STRIDE),
            align_corners=cfg.MODEL.FCN.ALIGN_CORNERS,
        )
        return ret

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N x classes x H x W) of normalised images (N x 3 x H x W), at their size."""
        logits, _ = self.sem_seg_head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                             align_corners=self.align_corners)

    def slide_inference(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the sliding windows that cover each pixel."""
        height, width = images.shape[-2:]
        total = None
        count = images.new_zeros((1, 1, height, width))
        for y1, y2, x1, x2 in sliding_windows(height, width, self.test_crop_size,
                                              self.test_stride):
            logits = self.encode_decode(images[..., y1:y2, x1:x2])
            if total is None:
                total = images.new_zeros((images.shape[0], logits.shape[1], height, width))
            total[..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
        return total / count

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return super().forward(batched_inputs)
        results = []
        for x in batched_inputs:
            image = ((x["image"].to(self.device) - self.pixel_mean) / self.pixel_std)[None]
            logits = (self.slide_inference(image) if self.test_crop_size
                      else self.encode_decode(image))
            size = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            logits = F.interpolate(logits, size=size, mode="bilinear",
                                   align_corners=self.align_corners)
            results.append({"sem_seg": logits[0]})
        return results
