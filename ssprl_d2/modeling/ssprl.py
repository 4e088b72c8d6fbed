"""The SS-PRL pre-trainer as a Detectron2 meta-architecture (``META_ARCHITECTURE: "SSPRL"``)."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from torch import nn

from ..data.views import CropSpec, build_view_layout
from .heads import CrossScaleLearner, ProjectionHead, Prototypes, unique_modules
from .loss import (
    CROSS_TARGETS,
    REDUCTIONS,
    code_usage,
    cross_scale_loss,
    effective_prototypes,
    pool_patch_predictions,
    prediction_entropy,
    swap_accuracy,
    swapped_prediction_loss,
)
from .pretrainer import Pretrainer, put_scalars
from .queue import EmbeddingQueue, local_queue_length
from .sinkhorn import sinkhorn

__all__ = ["SSPRL"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class SSPRL(Pretrainer):
    """Self-Supervised Pyramid Representation Learning (Hsieh et al.), Eq. 1-4 of the paper.

    One trunk f_theta (a Detectron2 ResNet, so its weights load into Mask R-CNN unchanged), one
    projection head and one prototype set C_s per pyramid scale, and one cross-scale learner
    g_phi,s per patch scale. Training input: a list of dicts, one per image, with ``"crops"``
    (uint8 CHW tensors in ``layout`` order), ``"seed"`` (an int that makes the device-side
    augmentation reproducible) and ``"photometric_done"`` (True when the data workers already
    applied the photometric part; otherwise it is applied here, batched).
    Inference input: dicts with ``"image"`` (uint8 CHW RGB);
    output: one dict per image with the pooled trunk ``"features"``.
    """

    analysis_sections = ("prototypes", "cross_scale")

    @configurable
    def __init__(
        self,
        *,
        num_prototypes: Sequence[int],
        head_hidden_dim: int,
        head_out_dim: int,
        head_norm: str = "BN",
        shared_prototypes: bool = False,
        temperature: float = 0.1,
        sinkhorn_iters: int = 3,
        sinkhorn_epsilon: float = 0.05,
        crops_for_assign: Sequence[int] = (0, 1),
        pyr_weights: Sequence[float],
        cross_weights: Sequence[float],
        cross_lambda: float = 1.0,
        cross_mu: str = "softmax",
        cross_targets: str = "paired",
        loss_reduction: str = "sum",
        queue_lengths: Sequence[int] = (),
        queue_join: str = "full",
        queue_start_epoch: int = -1,
        freeze_prototypes_iters: int = 0,
        **base,
    ):
        """
        Args:
            num_prototypes: K_s for s = 0..S.
            head_hidden_dim, head_out_dim, head_norm: projection head widths and norm.
            shared_prototypes: use C_0 at every scale (Table 4 ablation).
            temperature: tau. sinkhorn_iters, sinkhorn_epsilon: Sinkhorn-Knopp settings.
            crops_for_assign: scale-0 crops whose codes are targets.
            pyr_weights: alpha_s, s = 0..S. cross_weights: beta_s, s = 1..S.
            cross_lambda: lambda of Eq. 4. cross_mu: "softmax" (paper) or "scores" (release).
            cross_targets: "paired" (paper) or "both" (release), see :func:`cross_scale_loss`.
            loss_reduction: "sum" (paper) or "mean" (SwAV, release) over the assigned crops of a
                scale and over L_cross's terms.
            queue_lengths: per-process queue length per scale (0: none).
            queue_join: "full" (a queue joins Sinkhorn once it is full) or "any" (the release:
                every switched-on queue joins once any queue was full, see :meth:`_queue_joins`).
            queue_start_epoch: epoch at which the queues join Sinkhorn (negative: never).
            freeze_prototypes_iters: iterations without updates of C_s and g_phi.
            base: :class:`~ssprl_d2.modeling.pretrainer.Pretrainer`'s (a ResNet ``backbone``
                with its pooled ``in_feature``, ``layout``, pixel statistics, ``photometric``,
                ``trunk_name`` and the switches).
        """
        super().__init__(**base)
        self.queue_start_epoch = queue_start_epoch
        self.freeze_prototypes_iters = freeze_prototypes_iters
        self.num_scales = max(spec.scale for spec in self.layout) + 1
        if len(num_prototypes) != self.num_scales:
            raise ValueError(
                f"NUM_PROTOTYPES has {len(num_prototypes)} entries for {self.num_scales} scales"
            )
        if len(pyr_weights) != self.num_scales or len(cross_weights) != self.num_scales - 1:
            raise ValueError(
                f"{self.num_scales} scales need {self.num_scales} PYR_WEIGHTS (alpha) and "
                f"{self.num_scales - 1} CROSS_WEIGHTS (beta); got {list(pyr_weights)} and "
                f"{list(cross_weights)}"
            )
        if cross_mu not in ("softmax", "scores"):
            raise ValueError(f"CROSS_MU must be 'softmax' or 'scores', got {cross_mu!r}")
        if cross_targets not in CROSS_TARGETS:
            raise ValueError(f"CROSS_TARGETS must be one of {CROSS_TARGETS}, got {cross_targets!r}")
        if loss_reduction not in REDUCTIONS:
            raise ValueError(f"LOSS_REDUCTION must be one of {REDUCTIONS}, got {loss_reduction!r}")
        self.scale_views = self._scale_views(self.layout, self.num_scales)
        self.patches_per_scale = [
            max(spec.patch for spec in self.layout if spec.scale == s) + 1
            for s in range(self.num_scales)
        ]
        if max(crops_for_assign) >= len(self.scale_views[0]):
            raise ValueError(f"CROPS_FOR_ASSIGN {list(crops_for_assign)} beyond the scale-0 crops")

        trunk_dim = self.backbone.output_shape()[self.in_feature].channels
        self.heads = nn.ModuleList(
            ProjectionHead(trunk_dim, head_hidden_dim, head_out_dim, head_norm)
            for _ in range(self.num_scales)
        )
        if shared_prototypes:
            shared = Prototypes(head_out_dim, num_prototypes[0])
            self.prototypes = nn.ModuleList([shared] * self.num_scales)
            num_prototypes = [num_prototypes[0]] * self.num_scales
        else:
            self.prototypes = nn.ModuleList(Prototypes(head_out_dim, k) for k in num_prototypes)
        self.cross_learners = nn.ModuleList(
            CrossScaleLearner(k, num_prototypes[0]) for k in num_prototypes[1:]
        )
        self.queues = nn.ModuleList(
            EmbeddingQueue(2 if s > 0 else len(crops_for_assign), length, head_out_dim)
            for s, length in enumerate(list(queue_lengths) or [0] * self.num_scales)
        )
        self.temperature = temperature
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.crops_for_assign = list(crops_for_assign)
        self.pyr_weights = list(pyr_weights)
        self.cross_weights = list(cross_weights)
        self.cross_lambda = cross_lambda
        self.cross_mu = cross_mu
        self.cross_targets = cross_targets
        self.loss_reduction = loss_reduction
        if queue_join not in ("full", "any"):
            raise ValueError(f"QUEUE_JOIN must be 'full' or 'any', got {queue_join!r}")
        self.queue_join = queue_join
        self._queues_joined = False

    @staticmethod
    def _scale_views(layout: Sequence[CropSpec], num_scales: int) -> List[List[List[int]]]:
        # scale_views[s][v] = layout indices of view v at scale s, ordered by patch index
        views: List[Dict[int, List[Tuple[int, int]]]] = [{} for _ in range(num_scales)]
        for i, spec in enumerate(layout):
            views[spec.scale].setdefault(spec.view, []).append((spec.patch, i))
        return [[[i for _, i in sorted(v[k])] for k in sorted(v)] for v in views]

    @classmethod
    def from_config(cls, cfg):
        c, ci = cfg.MODEL.SSPRL, cfg.INPUT.PRETRAIN
        trunk = cls.resnet_trunk_config(cfg)
        layout = build_view_layout(ci.NMB_CROPS, ci.SIZE_CROPS, ci.GRIDS, ci.PATCH_CROP_SIZES)
        world = comm.get_world_size()
        global_batch = cfg.SOLVER.IMS_PER_BATCH
        patches = [1] + [g * g for g in ci.GRIDS]
        queue_lengths = [
            local_queue_length(length, global_batch, m, world, c.QUEUE_ROUNDING)
            for length, m in zip(list(c.QUEUE_LENGTHS) or [0] * len(patches), patches)
        ]
        if c.QUEUE_START_EPOCH < 0:
            queue_lengths = [0] * len(patches)
        return {
            **trunk,
            "layout": layout,
            "num_prototypes": c.NUM_PROTOTYPES,
            "head_hidden_dim": c.HEAD_HIDDEN_DIM,
            "head_out_dim": c.HEAD_OUT_DIM,
            "head_norm": c.HEAD_NORM,
            "shared_prototypes": c.SHARED_PROTOTYPES,
            "temperature": c.TEMPERATURE,
            "sinkhorn_iters": c.SINKHORN_ITERS,
            "sinkhorn_epsilon": c.SINKHORN_EPSILON,
            "crops_for_assign": c.CROPS_FOR_ASSIGN,
            "pyr_weights": c.PYR_WEIGHTS,
            "cross_weights": c.CROSS_WEIGHTS,
            "cross_lambda": c.CROSS_LAMBDA,
            "cross_mu": c.CROSS_MU,
            "cross_targets": c.CROSS_TARGETS,
            "loss_reduction": c.LOSS_REDUCTION,
            "queue_lengths": queue_lengths,
            "queue_join": c.QUEUE_JOIN,
            "queue_start_epoch": c.QUEUE_START_EPOCH,
            "freeze_prototypes_iters": c.FREEZE_PROTOTYPES_ITERS,
            **cls.shared_config(cfg),
        }

    def prototype_modules(self) -> List[nn.Module]:
        """Modules whose rows are prototypes: normalised every step, frozen at the start.

        The prototype sets C_s (once each when shared) and the cross-scale learners g_phi.
        """
        return unique_modules(list(self.prototypes)) + list(self.cross_learners)

    def queue_modules(self) -> List[EmbeddingQueue]:
        """The per-scale embedding queues that hold anything (length above 0)."""
        return [q for q in self.queues if q.length > 0]

    def rank_state_dict(self) -> Dict[str, torch.Tensor]:
        """This process's own state, which differs between processes: the queue buffers.

        Returns:
            {state-dict name: CPU tensor} of every queue buffer.
        """
        return {
            k: v.detach().cpu().clone()
            for k, v in self.state_dict().items()
            if k.startswith("queues.")
        }

    def load_rank_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`rank_state_dict` returned (on this process)."""
        if set(state) != {k for k in self.state_dict() if k.startswith("queues.")}:
            raise ValueError(f"per-process state has keys {sorted(state)}; expected the queues")
        # through load_state_dict, so that each queue reads its loaded fill count back
        self.queues.load_state_dict({k[len("queues.") :]: v for k, v in state.items()})

    def reset_rank_state(self) -> None:
        """Empty every queue (it refills, and joins Sinkhorn again once full)."""
        for queue in self.queue_modules():
            queue.reset()
        self._queues_joined = False

    def scale_assignments(
        self, scale: int, pooled: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Projections and prototype probabilities of pooled trunk features at one scale, as in
        training (Eq. 1): z = head_s(f), p = softmax(z^T C_s / tau).

        Args:
            scale: s in 0..S.
            pooled: (N, C) pooled trunk features.

        Returns:
            (z (N, D), p (N, K_s)).
        """
        z = self.heads[scale](pooled)
        return z, F.softmax(self.prototypes[scale](z) / self.temperature, dim=1)

    # ---------------------------------------------------------------- trunk
    def embed_crops(self, batched_inputs: List[dict]) -> List[torch.Tensor]:
        """Pooled trunk features of every crop, one trunk call per distinct crop size.

        Args:
            batched_inputs: B dicts with ``"crops"`` in layout order.

        Returns:
            features[i]: (B, C) for layout index i.
        """
        batch = len(batched_inputs)
        per_crop: List[Optional[torch.Tensor]] = [None] * len(self.layout)
        for indices, crops in self.crop_groups(batched_inputs):
            feats = self.image_features(self.normalize(crops))
            for k, i in enumerate(indices):
                per_crop[i] = feats[k * batch : (k + 1) * batch]
        return per_crop  # type: ignore[return-value]

    # ---------------------------------------------------------------- codes
    def _queue_joins(self, queue: EmbeddingQueue) -> bool:
        # "any": the release's use_the_queue, set by the first full queue met (scale 0's views,
        # then each patch scale's, in the release's order) and kept from then on
        if self.queue_join == "any":
            if queue.active and queue.length > 0 and (self._queues_joined or queue.ready):
                self._queues_joined = True
                return True
            return False
        return queue.ready

    def _codes(self, scale: int, view: int, z: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        queue = self.queues[scale]
        if self._queue_joins(queue):
            with torch.no_grad():
                queued = self.prototypes[scale](queue.embeddings[view].to(z.dtype))
            scores = torch.cat([queued, scores.detach()])
        codes = sinkhorn(scores, self.sinkhorn_iters, self.sinkhorn_epsilon)
        return codes[-z.shape[0] :]

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        skipped = self.count_skipped(batched_inputs)
        batch = len(batched_inputs)
        feats = self.embed_crops(batched_inputs)
        losses: Dict[str, torch.Tensor] = {}
        # 0-dim tensors on the device, read back by put_scalars only inside a trainer
        metrics: Dict[str, Union[float, torch.Tensor]] = {
            "data/skipped_images": skipped
        }
        global_codes: List[torch.Tensor] = []
        for s in range(self.num_scales):
            views = self.scale_views[s]
            # one head call per scale: BN statistics over every crop of the scale
            flat = torch.cat([feats[i] for view in views for i in view])
            z = self.heads[s](flat)
            scores = self.prototypes[s](z)
            per_view = len(views[0]) * batch
            z_views = z.split(per_view)
            score_views = scores.split(per_view)
            if s == 0:
                targets = self.crops_for_assign
                z_assign = [z_views[i] for i in targets]
            else:
                # patch rows are patch-major within a view: reorder to (B * M) image-major later
                targets = [0, 1]
                z_assign = list(z_views)
            codes = [
                self._codes(s, j, z_assign[j], score_views[i]) for j, i in enumerate(targets)
            ]
            self.queues[s].push(z_assign)
            losses[f"loss_pyr_s{s}"] = self.pyr_weights[s] * swapped_prediction_loss(
                codes, list(score_views), targets, self.temperature, self.loss_reduction
            )
            if s == 0:
                global_codes = codes
            else:
                m = self.patches_per_scale[s]
                projected = [
                    self.cross_learners[s - 1](
                        pool_patch_predictions(
                            v.view(m, batch, -1).transpose(0, 1), self.cross_mu, self.temperature
                        )
                    )
                    for v in score_views
                ]
                losses[f"loss_cross_s{s}"] = (
                    self.cross_lambda
                    * self.cross_weights[s - 1]
                    * cross_scale_loss(
                        global_codes,
                        projected,
                        self.temperature,
                        self.cross_targets,
                        self.loss_reduction,
                    )
                )
            metrics[f"ssprl/code_usage_s{s}"] = code_usage(torch.cat(codes))
            metrics[f"ssprl/pred_entropy_s{s}"] = prediction_entropy(scores, self.temperature)
            metrics[f"ssprl/effective_prototypes_s{s}"] = effective_prototypes(scores)
            metrics[f"ssprl/swap_accuracy_s{s}"] = swap_accuracy(codes, score_views, targets)
        put_scalars(**metrics)
        return losses
