"""The MLS pre-trainer as a Detectron2 meta-architecture (``META_ARCHITECTURE: "MLS"``)."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..data.views import build_view_layout
from .distributed import (
    concat_all_gather,
    local_permutation,
    shuffle_across_processes,
    split_batch,
    unshuffle_across_processes,
)
from .heads import ProjectionHead
from .mls_loss import (
    info_nce,
    multilabel_bce,
    pseudo_label_precision,
    pseudo_label_usage,
    topk_pseudo_labels,
)
from .pretrainer import MomentumPretrainer, pooled_trunk_features, put_scalars
from .queue import AlignedDictionary

__all__ = ["MLS", "KEY_BN_MODES", "multi_hot"]

logger = logging.getLogger(__name__)

# MODEL.MLS.KEY_BN: the trunk's own norm for the key encoder, or MoCo v2's shuffle-BN
KEY_BN_MODES = ("sync", "shuffle")


def multi_hot(category_ids: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(B, C) uint8 multi-hot labels from each sample's category ids.

    Raises:
        ValueError: an id outside 0..C-1.
    """
    out = torch.zeros(len(category_ids), num_classes, dtype=torch.uint8)
    for row, ids in enumerate(category_ids):
        for c in ids:
            if not 0 <= int(c) < num_classes:
                raise ValueError(
                    f"category id {c} outside 0..{num_classes - 1}: set MODEL.MLS."
                    "PRECISION_CLASSES to the dataset's number of classes (or 0)"
                )
            out[row, int(c)] = 1
    return out


@META_ARCH_REGISTRY.register()
class MLS(MomentumPretrainer):
    """Multi-Label Self-supervised learning (Zhu et al., ICCV 2023) on a Detectron2 ResNet trunk.

    MoCo v2 skeleton: the query encoder is ``backbone`` (exported by ``tools/convert_weights.py``)
    plus ``head``, a two-layer MLP; the key encoder (``key_backbone``, ``key_head``) is their
    momentum copy. Two dictionaries of one order and length D (``dictionary``): Q_g holds the
    L2-normalised pooled key-trunk features g, Q_z the L2-normalised key projections z. For a
    query view x1: y = top-k(g1 . Q_g) (binary pseudo-labels), L_ml = BCE(z1 . Q_z / tau, y)
    averaged over D, L_InfoNCE = MoCo's loss with the other view's key as positive and Q_z as
    negatives; L = L_InfoNCE + w L_ml. Keys of every process enter the dictionaries (gathered),
    so they are identical on all ranks and checkpointed as ordinary buffers.

    Training input: a list of dicts, one per image, with ``"crops"`` (two uint8 CHW crops),
    ``"seed"``, ``"photometric_done"`` and, for the precision scalar, ``"category_ids"``.
    Inference input: dicts with ``"image"`` (uint8 CHW RGB); output: one dict per image with the
    pooled trunk ``"features"``.
    """

    analysis_sections = ("pseudo_positives",)
    momentum_pairs = (("backbone", "key_backbone"), ("head", "key_head"))

    @configurable
    def __init__(
        self,
        *,
        head_hidden_dim: int,
        head_out_dim: int,
        head_norm: str = "",
        momentum: float = 0.995,
        temperature: float = 0.2,
        dictionary_length: int = 4096,
        top_k: int = 20,
        ml_weight: float = 0.5,
        symmetric: bool = False,
        key_bn: str = "sync",
        bn_splits: int = 1,
        precision_classes: int = 0,
        **base,
    ):
        """
        Args:
            head_hidden_dim, head_out_dim, head_norm: MLP head widths and norm ("" for none).
            momentum: m of the key encoder's EMA.
            temperature: tau of InfoNCE and of the multi-label logits.
            dictionary_length: D, rows of Q_g and Q_z (global).
            top_k: k pseudo-positives per query.
            ml_weight: w, weight of L_ml.
            symmetric: add the swapped term (view 2 queries against view 1 keys).
            key_bn: "sync" (the trunk's own norm) or "shuffle" (MoCo v2's shuffle-BN).
            bn_splits: both encoders run on this many equal parts of the local batch, so batch
                norm sees a part only; with ``key_bn`` "shuffle" the keys are permuted before
                they are split (MoCo's shuffle-BN on one process). 1: the whole batch.
            precision_classes: C for the pseudo-label precision scalar; 0 switches it off.
            base: :class:`~ssprl_d2.modeling.pretrainer.Pretrainer`'s (the query trunk
                ``backbone`` with its pooled ``in_feature``; ``layout``: the two crops of an
                input's ``"crops"``, scale 0, no patches; pixel statistics, ``photometric``,
                ``trunk_name`` and the switches, which apply to both trunks).
        """
        layout = base["layout"]
        if len(layout) != 2 or any(spec.scale != 0 for spec in layout):
            raise ValueError(
                "MLS takes two crops per image: INPUT.PRETRAIN.NMB_CROPS [2] (or [1, 1]) and "
                f"GRIDS []; the layout has {len(layout)} crops"
            )
        if key_bn not in KEY_BN_MODES:
            raise ValueError(f"MODEL.MLS.KEY_BN must be one of {KEY_BN_MODES}, got {key_bn!r}")
        if bn_splits < 1:
            raise ValueError(f"MODEL.MLS.BN_SPLITS must be >= 1, got {bn_splits}")
        if top_k < 1 or top_k > dictionary_length:
            raise ValueError(f"TOP_K {top_k} must be in 1..DICTIONARY_LENGTH {dictionary_length}")
        super().__init__(momentum=momentum, **base)
        trunk_dim = self.backbone.output_shape()[self.in_feature].channels
        self.head = ProjectionHead(trunk_dim, head_hidden_dim, head_out_dim, head_norm)
        self.add_momentum_copies()
        fields: Dict[str, Tuple[int, torch.dtype]] = {
            "g": (trunk_dim, torch.float32),
            "z": (head_out_dim, torch.float32),
        }
        if precision_classes > 0:
            # category ids of each key's image: the precision scalar only, never the loss
            fields["classes"] = (precision_classes, torch.uint8)
        self.dictionary = AlignedDictionary(dictionary_length, fields)
        self.temperature = temperature
        self.top_k = top_k
        self.ml_weight = ml_weight
        self.symmetric = symmetric
        self.key_bn = key_bn
        self.bn_splits = bn_splits
        self.precision_classes = precision_classes

    @classmethod
    def from_config(cls, cfg):
        c, ci = cfg.MODEL.MLS, cfg.INPUT.PRETRAIN
        if c.KEY_BN == "shuffle" and "Sync" in cfg.MODEL.RESNETS.NORM:
            logger.warning(
                "MODEL.MLS.KEY_BN 'shuffle' with a synchronised trunk norm: the shuffle changes "
                "nothing (set MODEL.RESNETS.NORM BN for MoCo v2's shuffle-BN)"
            )
        trunk = cls.resnet_trunk_config(cfg)
        return {
            **trunk,
            "layout": build_view_layout(ci.NMB_CROPS, ci.SIZE_CROPS, ci.GRIDS, ci.PATCH_CROP_SIZES),
            "head_hidden_dim": c.HEAD_HIDDEN_DIM,
            "head_out_dim": c.HEAD_OUT_DIM,
            "head_norm": c.HEAD_NORM,
            "momentum": c.MOMENTUM,
            "temperature": c.TEMPERATURE,
            "dictionary_length": c.DICTIONARY_LENGTH,
            "top_k": c.TOP_K,
            "ml_weight": c.ML_WEIGHT,
            "symmetric": c.SYMMETRIC,
            "key_bn": c.KEY_BN,
            "bn_splits": c.BN_SPLITS,
            "precision_classes": c.PRECISION_CLASSES,
            **cls.shared_config(cfg),
        }

    # ---------------------------------------------------------------- encoders
    def _encode(
        self, backbone: nn.Module, head: nn.Module, images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        # (g, z) of one encoder, batch norm over BN_SPLITS parts of the batch separately
        gs = [pooled_trunk_features(backbone, self.in_feature, part, self.channels_last)
              for part in split_batch(images, self.bn_splits)]
        zs = [head(g) for g in gs]
        if len(gs) == 1:  # the usual case: no copies on the training step's path
            return gs[0], zs[0]
        return torch.cat(gs), torch.cat(zs)

    def _query(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._encode(self.backbone, self.head, images)

    @torch.no_grad()
    def _keys(self, images: torch.Tensor, seed: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        # (normalised g, z) of the key encoder, shuffled (across processes, then within this
        # one when its batch is split) for shuffle-BN
        shuffle = self.key_bn == "shuffle"
        local = shuffle and self.bn_splits > 1
        if shuffle:
            images, inverse = shuffle_across_processes(images, seed)
        if local:
            perm = local_permutation(images.shape[0], seed, images.device)
            images = images[perm]
        g, z = self._encode(self.key_backbone, self.key_head, images)
        g = F.normalize(g.float(), dim=1)
        if local:
            order = torch.argsort(perm)
            g, z = g[order], z[order]
        if shuffle:
            g, z = unshuffle_across_processes(g, inverse), unshuffle_across_processes(z, inverse)
        return g, z

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        skipped = self.count_skipped(batched_inputs)
        seed = batched_inputs[0].get("seed")
        views = self.views(batched_inputs)
        # MoCo: the key encoder moves before it encodes this step's keys
        self.update_momentum()
        pairs = [(0, 1), (1, 0)] if self.symmetric else [(0, 1)]
        keys = {v: self._keys(views[v], seed) for _, v in pairs}
        # copies: the push below overwrites rows that backward still needs (as MoCo's clone)
        dict_g, dict_z = self.dictionary.valid("g").clone(), self.dictionary.valid("z").clone()
        classes = self._classes(batched_inputs)

        infonce, ml = [], []
        # 0-dim tensors on the device, read back by put_scalars only inside a trainer
        metrics: Dict[str, Union[float, torch.Tensor]] = {
            "data/skipped_images": skipped,
            "mls/dictionary_fill": self.dictionary.fill,
        }
        for q_view, k_view in pairs:
            g_q, z_q = self._query(views[q_view])
            infonce.append(info_nce(z_q, keys[k_view][1], dict_z, self.temperature))
            if dict_z.shape[0] == 0:
                ml.append(z_q.sum() * 0.0)  # nothing to label yet; keeps the graph whole
                continue
            labels = topk_pseudo_labels(F.normalize(g_q.detach().float(), dim=1), dict_g,
                                        self.top_k)
            ml.append(multilabel_bce(z_q, dict_z, labels, self.temperature))
            if q_view == 0:
                labelled = any(len(x.get("category_ids", ())) for x in batched_inputs)
                metrics.update(self._label_metrics(labels, classes, labelled))
                with torch.no_grad():
                    # collapse signals: both approach 1 when every projection points one way
                    metrics["mls/positive_similarity"] = (
                        (z_q.float() * keys[k_view][1].float()).sum(1).mean()
                    )
                    metrics["mls/dictionary_similarity"] = (z_q.float() @ dict_z.float().t()).mean()

        # keys enter the dictionaries after the losses, gathered so every rank holds the same
        new_g = torch.cat([keys[v][0] for _, v in pairs])
        new_z = torch.cat([keys[v][1] for _, v in pairs])
        rows = {"g": concat_all_gather(new_g), "z": concat_all_gather(new_z)}
        if classes is not None:
            rows["classes"] = concat_all_gather(torch.cat([classes] * len(pairs)))
        self.dictionary.push(**rows)
        put_scalars(**metrics)
        return {
            "loss_infonce": torch.stack(infonce).mean(),
            "loss_ml": self.ml_weight * torch.stack(ml).mean(),
        }

    def _classes(self, batched_inputs: List[dict]) -> Optional[torch.Tensor]:
        # multi-hot ground truth of this step's images, for the precision scalar only
        if self.precision_classes <= 0:
            return None
        ids = [x.get("category_ids", ()) for x in batched_inputs]
        return multi_hot(ids, self.precision_classes).to(self.device)

    def _label_metrics(
        self, labels: torch.Tensor, classes: Optional[torch.Tensor], labelled: bool
    ) -> Dict[str, torch.Tensor]:
        # labelled: some query has a class (known on the host from the inputs). Every query has
        # min(k, D) >= 1 pseudo-positives here, so the precision is defined exactly then
        metrics = {"mls/pseudo_label_usage": pseudo_label_usage(labels)}
        if classes is not None and labelled:
            precision, chance = pseudo_label_precision(
                labels, classes, self.dictionary.valid("classes")
            )
            metrics["mls/pseudo_label_precision"] = precision
            metrics["mls/pseudo_label_precision_chance"] = chance
        return metrics
