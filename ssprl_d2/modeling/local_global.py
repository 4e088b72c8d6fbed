"""Local-global patch matching on a ViT as a Detectron2 meta-architecture
(``META_ARCHITECTURE: "LocalGlobal"``, METHODS.md section 5)."""
import logging
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..data.views import build_view_layout
from .dino_loss import (
    LOSS_AVERAGES,
    entropy,
    local_global_pair_loss,
    pair_list,
    teacher_probabilities,
    update_center,
)
from .heads import DINOHead
from .patch_matching import match_batch
from .pretrainer import MomentumPretrainer, TeacherSchedule, put_scalars
from .vit import build_timm_vit, vit_name, vit_sizes

__all__ = ["LocalGlobal"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class LocalGlobal(MomentumPretrainer):
    """DINO self-distillation on the CLS token and on geometrically matched patch tokens.

    Student: ``backbone`` (a timm ViT, exported by ``tools/convert_weights.py``) and ``head`` (a
    :class:`DINOHead` applied to every token). Teacher: their EMA copies ``teacher_backbone``,
    ``teacher_head`` (no gradient), fed the global crops only. For every teacher global view t
    and every other view s of an image the loss is the CLS cross-entropy plus the cross-entropy of
    each pair of patch tokens covering the same part of the image
    (:func:`~ssprl_d2.modeling.patch_matching.match_patches` on the crops' recorded boxes and
    flips), combined by :func:`~ssprl_d2.modeling.dino_loss.local_global_pair_loss` and averaged
    over pairs. The teacher's outputs are centred per token position: ``center`` has one row for
    the CLS token and one for each patch position of the global grid (momentum 0.9).

    The training hooks set ``teacher_temp`` (warm-up) and ``momentum`` (cosine) every iteration
    and freeze :meth:`last_layer_modules` in the first epoch.

    Training input: one dict per image with ``"crops"`` (uint8 CHW, layout order: the global crops
    first), ``"boxes"`` (float [K, 4] x0 y0 x1 y1 in the source image), ``"flips"`` (bool [K]) and
    ``"seed"``. Inference input: dicts with ``"image"`` (uint8 CHW RGB); output: one dict per
    image with the CLS token's ``"features"``.
    """

    momentum_pairs = (("backbone", "teacher_backbone"), ("head", "teacher_head"))

    @configurable
    def __init__(
        self,
        *,
        num_global: int,
        patch_size: int,
        head_out_dim: int,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        patch_loss: bool = True,
        loss_average: str = "tokens",
        schedule: Optional[TeacherSchedule] = None,
        **base,
    ):
        """
        Args:
            num_global: the first ``num_global`` crops are global views (teacher inputs).
            patch_size: the ViT's patch side (a crop of side S has an (S / p)^2 grid).
            head_out_dim, head_hidden_dim, head_bottleneck_dim, norm_last_layer: DINO head.
            student_temp, teacher_temp: tau_s, tau_t (the hook warms tau_t up).
            center_momentum: m_c of the per-position teacher centre.
            momentum: lambda of the teacher EMA (the hook schedules it).
            patch_loss: False keeps the CLS terms only (the CLS-only ablation, i.e. DINO).
            loss_average: "tokens" or "terms", see :func:`local_global_pair_loss`.
            schedule: the teacher's momentum and temperature schedules and the last layer's
                frozen epochs (None: constant ``momentum`` and ``teacher_temp``, nothing frozen).
            base: :class:`~ssprl_d2.modeling.pretrainer.Pretrainer`'s (``backbone``: the student
                ViT, whose ``forward_features`` gives CLS + patch tokens, with an ``embed_dim``;
                ``layout``: the scale-0 crops of an input's ``"crops"``, no grid patches; pixel
                statistics, ``photometric``, ``trunk_name`` and the switches).
        """
        layout = base["layout"]
        if any(spec.scale != 0 for spec in layout):
            raise ValueError("LocalGlobal takes scale-0 crops only: set INPUT.PRETRAIN.GRIDS []")
        if not 1 <= num_global <= len(layout):
            raise ValueError(f"num_global {num_global} outside 1..{len(layout)}")
        if len({spec.size for spec in layout[:num_global]}) != 1:
            raise ValueError("the global crops must share one size (INPUT.PRETRAIN.SIZE_CROPS[0])")
        for spec in layout:
            if spec.size % patch_size:
                raise ValueError(
                    f"crop side {spec.size} is not a multiple of MODEL.VIT.PATCH_SIZE {patch_size}"
                )
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(f"MODEL.LOCALGLOBAL.LOSS_AVERAGE must be one of {LOSS_AVERAGES}")
        super().__init__(momentum=momentum, **base)
        self.head = DINOHead(
            self.backbone.embed_dim, head_out_dim, head_hidden_dim, head_bottleneck_dim,
            norm_last_layer,
        )
        self.add_momentum_copies()
        self.schedule = schedule
        self.num_global = num_global
        self.patch_size = patch_size
        self.grids = [spec.size // patch_size for spec in self.layout]
        global_tokens = 1 + self.grids[0] ** 2
        # c: one row per token position of a global view (CLS first), checkpointed
        self.register_buffer("center", torch.zeros(global_tokens, head_out_dim))
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.patch_loss = patch_loss
        self.loss_average = loss_average
        self.pairs = pair_list(num_global, len(self.layout))

    @classmethod
    def from_config(cls, cfg):
        c, ci, v = cfg.MODEL.LOCALGLOBAL, cfg.INPUT.PRETRAIN, cfg.MODEL.VIT
        if not ci.RECORD_BOXES and c.PATCH_LOSS:
            raise ValueError("patch matching needs the crops' boxes: set INPUT.PRETRAIN.RECORD_BOXES")
        backbone = build_timm_vit(
            img_size=v.PRETRAIN_IMG_SIZE, drop_path_rate=v.DROP_PATH_RATE, **vit_sizes(cfg)
        )
        if v.PRETRAIN_IMG_SIZE != ci.SIZE_CROPS[0]:
            raise ValueError(
                f"MODEL.VIT.PRETRAIN_IMG_SIZE {v.PRETRAIN_IMG_SIZE} must equal the global crop "
                f"side INPUT.PRETRAIN.SIZE_CROPS[0] {ci.SIZE_CROPS[0]}"
            )
        return {
            "backbone": backbone,
            "layout": build_view_layout(ci.NMB_CROPS, ci.SIZE_CROPS, [], []),
            "num_global": ci.NMB_CROPS[0],
            "patch_size": v.PATCH_SIZE,
            "head_out_dim": c.HEAD_OUT_DIM,
            "head_hidden_dim": c.HEAD_HIDDEN_DIM,
            "head_bottleneck_dim": c.HEAD_BOTTLENECK_DIM,
            "norm_last_layer": c.NORM_LAST_LAYER,
            "student_temp": c.STUDENT_TEMP,
            "teacher_temp": c.WARMUP_TEACHER_TEMP,
            "center_momentum": c.CENTER_MOMENTUM,
            "momentum": c.MOMENTUM,
            "patch_loss": c.PATCH_LOSS,
            "loss_average": c.LOSS_AVERAGE,
            "trunk_name": vit_name(v.EMBED_DIM, v.PATCH_SIZE),
            "schedule": TeacherSchedule(
                momentum=c.MOMENTUM,
                momentum_end=c.MOMENTUM_END,
                warmup_temp=c.WARMUP_TEACHER_TEMP,
                temp=c.TEACHER_TEMP,
                warmup_temp_epochs=c.WARMUP_TEACHER_TEMP_EPOCHS,
                freeze_last_layer_epochs=c.FREEZE_LAST_LAYER_EPOCHS,
            ),
            **cls.shared_config(cfg),
        }

    # ------------------------------------------------ what the pre-training hooks ask for
    def last_layer_modules(self) -> List[nn.Module]:
        """The head's last layer, frozen in the first epoch (DINO)."""
        return [self.head.last_layer]

    def teacher_schedule(self) -> Optional[TeacherSchedule]:
        """DINO's schedules, from MODEL.LOCALGLOBAL."""
        return self.schedule

    # ---------------------------------------------------------------- forward
    def _geometry(self, batched_inputs: List[dict]):
        if "boxes" not in batched_inputs[0]:
            raise ValueError(
                "inputs carry no crop boxes: set INPUT.PRETRAIN.RECORD_BOXES True for LocalGlobal"
            )
        boxes = torch.stack([x["boxes"] for x in batched_inputs]).tolist()  # B x K x 4
        flips = torch.stack([x["flips"] for x in batched_inputs]).tolist()  # B x K
        return boxes, flips

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        batch = len(batched_inputs)
        skipped = self.count_skipped(batched_inputs)
        views = self.views(batched_inputs)
        # the teacher follows the student's latest weights before it makes this step's targets
        self.update_momentum()

        with torch.no_grad():
            t_logits = self.teacher_head(
                self.teacher_backbone.forward_features(torch.cat(views[: self.num_global]))
            )  # (G * B, T, K)
            t_probs = teacher_probabilities(t_logits, self.center, self.teacher_temp)
            t_probs = t_probs.view(self.num_global, batch, *t_probs.shape[1:])

        student_logp: List[Optional[torch.Tensor]] = [None] * len(self.layout)
        for _, indices in self.size_groups:
            tokens = self.backbone.forward_features(torch.cat([views[i] for i in indices]))
            logp = F.log_softmax(self.head(tokens).float() / self.student_temp, dim=-1)
            for k, i in enumerate(indices):
                student_logp[i] = logp[k * batch : (k + 1) * batch]

        matched: List[int] = []
        losses = []
        geometry = self._geometry(batched_inputs) if self.patch_loss else None
        for t, s in self.pairs:
            matches = [((), ())] * batch
            if geometry is not None:
                boxes, flips = geometry
                matches = match_batch(
                    [b[t] for b in boxes], [f[t] for f in flips], self.grids[t],
                    [b[s] for b in boxes], [f[s] for f in flips], self.grids[s],
                )
            matched.extend(len(m[0]) for m in matches)
            losses.append(
                local_global_pair_loss(
                    t_probs[t], student_logp[s], matches, self.loss_average, self.patch_loss
                )
            )
        loss = torch.stack(losses).mean()
        update_center(self.center, t_logits, self.center_momentum)
        self._put_metrics(t_probs, student_logp, matched, skipped)
        return {"loss_local_global": loss}

    @torch.no_grad()
    def _put_metrics(
        self,
        t_probs: torch.Tensor,
        student_logp: List[torch.Tensor],
        matched: List[int],
        skipped: float,
    ) -> None:
        cls = t_probs[:, :, 0].flatten(0, 1)
        # the CLS part alone (DINO's loss), to tell the image-level from the patch-level terms
        cls_loss = torch.stack(
            [local_global_pair_loss(t_probs[t], student_logp[s], (), patches=False)
             for t, s in self.pairs]
        ).mean()
        patches = t_probs[:, :, 1:].flatten(0, 2)
        # collapse signals: per-sample entropy -> 0 when sharpening wins, batch-mean entropy
        # -> 0 when every image gets the same output (both near ln K: uniform collapse)
        # 0-dim tensors on the device, read back by put_scalars only inside a trainer
        metrics: Dict[str, Union[float, torch.Tensor]] = {
            "localglobal/cls_loss": cls_loss,
            "localglobal/teacher_entropy": entropy(cls).mean(),
            "localglobal/teacher_patch_entropy": entropy(patches).mean(),
            "localglobal/teacher_batch_entropy": entropy(cls.mean(0)),
            "localglobal/teacher_temp": float(self.teacher_temp),
            "localglobal/momentum": float(self.momentum),
            "data/skipped_images": skipped,
        }
        if self.patch_loss:  # the CLS-only ablation matches nothing
            metrics["localglobal/matched_pairs"] = float(sum(matched)) / max(len(matched), 1)
            metrics["localglobal/no_overlap_fraction"] = (
                sum(1 for m in matched if m == 0) / max(len(matched), 1)
            )
        put_scalars(**metrics)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The student's CLS token of normalised images: (N, embed_dim)."""
        return self.backbone.forward_features(images)[:, 0]
