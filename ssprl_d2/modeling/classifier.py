"""Multi-label image classifier on a ResNet trunk (``META_ARCHITECTURE: "MultiLabelClassifier"``).

The downstream protocols of the paper (METHODS.md section 2): linear evaluation (frozen trunk,
global average pooling, one linear layer, BCE) and semi-supervised fine-tuning of the whole
network. The trunk is a Detectron2 ResNet, so weights exported by ``tools/convert_weights.py``
load into it by Detectron2's name matching.
"""
from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_resnet_backbone
from torch import nn

__all__ = ["MultiLabelClassifier"]


@META_ARCH_REGISTRY.register()
class MultiLabelClassifier(nn.Module):
    """Pooled trunk feature -> one linear layer -> C independent sigmoid outputs.

    Training input: a list of dicts with ``"image"`` (uint8 [3, H, W] RGB, all of one size) and
    ``"labels"`` (float [C] multi-hot); output ``{"loss_cls"}``, the mean binary cross-entropy over
    images and classes. Inference output: one ``{"scores": float [C]}`` (sigmoid probabilities)
    per image.
    """

    # what tools/train_net.py trains this meta-architecture as (loader, evaluator)
    task = "multilabel"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        num_classes: int,
        freeze_trunk: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: the trunk; ``in_feature`` names its output that is average-pooled.
            in_feature: e.g. "res5".
            num_classes: C, the number of labels.
            freeze_trunk: linear evaluation: the trunk gets no gradient and stays in eval mode
                (BN running statistics fixed) even when the model is put in ``train()``.
            pixel_mean, pixel_std: per-channel RGB normalisation on the 0-255 scale.
        """
        super().__init__()
        if in_feature not in backbone.output_shape():
            raise ValueError(
                f"the trunk has no output {in_feature!r} (it has "
                f"{sorted(backbone.output_shape())}): set MODEL.RESNETS.OUT_FEATURES ['res5']"
            )
        if num_classes < 1:
            raise ValueError(f"MODEL.MULTILABEL.NUM_CLASSES must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.freeze_trunk = freeze_trunk
        channels = backbone.output_shape()[in_feature].channels
        self.head = nn.Linear(channels, num_classes)
        # the usual linear-probe initialisation (MoCo, SwAV): small weights, zero bias
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        if freeze_trunk:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.train()

    @classmethod
    def from_config(cls, cfg) -> Dict:
        in_feature = "res5"
        if list(cfg.MODEL.RESNETS.OUT_FEATURES) != [in_feature]:
            raise ValueError(
                "MultiLabelClassifier pools the last ResNet stage: set "
                f"MODEL.RESNETS.OUT_FEATURES ['res5'] (got {list(cfg.MODEL.RESNETS.OUT_FEATURES)})"
            )
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        return {
            "backbone": backbone,
            "in_feature": in_feature,
            "num_classes": cfg.MODEL.MULTILABEL.NUM_CLASSES,
            "freeze_trunk": cfg.MODEL.MULTILABEL.FREEZE_TRUNK,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> "MultiLabelClassifier":
        """Set train/eval mode; a frozen trunk stays in eval mode so BN statistics never move."""
        super().train(mode)
        if self.freeze_trunk:
            self.backbone.eval()
        return self

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled trunk output.

        Args:
            images: normalised float [B, 3, H, W].

        Returns:
            [B, C_trunk] (2048 for ResNet-50, 512 for ResNet-18).
        """
        # no graph through a frozen trunk: saves the activations' memory in linear evaluation
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_trunk):
            features = self.backbone(images)[self.in_feature]
        return features.mean(dim=(2, 3))

    def preprocess(self, batched_inputs: List[dict]) -> torch.Tensor:
        """Stack the uint8 images and normalise them.

        Args:
            batched_inputs: dicts with ``"image"`` uint8 [3, H, W], one size for the batch.

        Returns:
            float [B, 3, H, W] on the model's device.
        """
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device)
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(
        self, batched_inputs: List[dict]
    ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """Loss in training, sigmoid scores in inference.

        Args:
            batched_inputs: B dicts with ``"image"`` and, in training, ``"labels"`` float [C].

        Returns:
            training: ``{"loss_cls": scalar}``; inference: B dicts ``{"scores": float [C]}``.
        """
        logits = self.head(self.pooled_features(self.preprocess(batched_inputs)))
        if not self.training:
            return [{"scores": s} for s in logits.sigmoid()]
        labels = torch.stack([torch.as_tensor(x["labels"]) for x in batched_inputs])
        labels = labels.to(self.device, dtype=logits.dtype)
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} for {self.num_classes} classes; "
                "check MODEL.MULTILABEL.NUM_CLASSES against the dataset"
            )
        return {"loss_cls": F.binary_cross_entropy_with_logits(logits, labels)}
