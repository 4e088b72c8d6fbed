"""Export a pre-trained trunk: a ResNet to Detectron2's or torchvision's weight format, a ViT to
Detectron2's ViTDet or timm's.

Inputs: a checkpoint of ``tools/train_net.py`` (SS-PRL, MLS or local-global; trunk under
``backbone.``), or a plain torchvision ResNet / timm ViT state dict. Only the trunk leaves:
projection heads, prototypes, g_phi, queues, key encoders and teachers are dropped and reported.
"""
import argparse
import logging
import math
import os
import pickle
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .atomic import atomic_write

__all__ = [
    "ConversionError",
    "ConversionReport",
    "load_state_dict_any",
    "select_network",
    "extract_trunk",
    "infer_depth",
    "validate_trunk",
    "to_torchvision",
    "save_detectron2",
    "save_torchvision",
    "is_vit_state",
    "extract_vit",
    "validate_vit",
    "save_vitdet",
    "convert_checkpoint",
]

logger = logging.getLogger(__name__)

# blocks per stage (res2..res5) and whether the blocks are bottlenecks, by ResNet depth
RESNET_SPECS = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
    152: ([3, 8, 36, 3], True),
}
# prefixes under which a pre-trainer keeps its trunk (DDP "module." is stripped first)
TRUNK_PREFIXES = ("backbone.bottom_up.", "backbone.", "trunk.", "encoder_q.", "encoder.")
# the momentum copy of the trunk in a momentum method's checkpoint (local-global's teacher, MLS's
# key encoder), and what the export may take from such a checkpoint
MOMENTUM_PREFIXES = ("teacher_backbone.", "key_backbone.")
NETWORKS = ("teacher", "student")


class ConversionError(ValueError):
    """The input cannot be exported (not a checkpoint, no trunk, inconsistent shapes)."""


@dataclass
class ConversionReport:
    """What the export kept, dropped and renamed."""

    source_format: str = ""
    depth: int = 0
    # "ResNet-<depth>" or "ViT (width W, depth D, patch P, position grid G x G)"
    architecture: str = ""
    kept: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    renamed: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self, limit: int = 8) -> str:
        def head(items):
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")

        counters = [k for k in self.dropped if k.endswith("num_batches_tracked")]
        others = [k for k in self.dropped if not k.endswith("num_batches_tracked")]
        dropped_groups = sorted({k.split(".")[0] for k in others})
        lines = [
            f"source: {self.source_format}, {self.architecture or f'ResNet-{self.depth}'}",
            f"kept {len(self.kept)} trunk tensors",
            f"dropped {len(others)} non-trunk keys (groups: {', '.join(dropped_groups) or '-'})"
            f" and {len(counters)} BN num_batches_tracked counters",
            f"renamed {len(self.renamed)} keys"
            + (f": {head([f'{a} -> {b}' for a, b in self.renamed])}" if self.renamed else ""),
        ]
        return "\n".join(lines)


def load_state_dict_any(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a checkpoint file into a flat {name: tensor} dict.

    Args:
        path: a ``.pth``/``.pt`` torch checkpoint (Detectron2's ``{"model": ...}``, a
            ``{"state_dict": ...}`` wrapper or a bare state dict) or a Detectron2 ``.pkl``.

    Returns:
        (state dict, a short description of the container).

    Raises:
        ConversionError: the file is missing or is not a checkpoint.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    obj = None
    errors = []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next reader"
        errors.append(f"torch.load: {e.__class__.__name__}")
    if obj is None:
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")
        except Exception as e:  # noqa: BLE001
            errors.append(f"pickle: {e.__class__.__name__}")
    if obj is None:
        raise ConversionError(f"{path} is not a checkpoint ({'; '.join(errors)})")
    container = "state dict"
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj, container = obj[key], f"checkpoint['{key}']"
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{path} holds no state dict (found {type(obj).__name__})")
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            state[str(k)] = v
    if not state:
        raise ConversionError(f"{path} holds no tensors")
    return state, container


_TV_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def _torchvision_to_d2(name: str) -> Optional[str]:
    """torchvision ResNet name -> Detectron2 ResNet name (None for non-trunk keys such as fc)."""
    if name.startswith("fc."):
        return None
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1.") :]
    m = _TV_BLOCK.match(name)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.weight$", r"conv\1.weight", rest)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{stage}.{block}.{rest}"


def _is_d2_trunk_name(name: str) -> bool:
    return name.startswith("stem.") or re.match(r"^res[2-5]\.\d+\.", name) is not None


def extract_trunk(
    state: Mapping[str, torch.Tensor]
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """The trunk tensors under Detectron2 ResNet names (``stem.*``, ``res2.*`` ... ``res5.*``).

    Args:
        state: a flat state dict of a pre-trainer or of a torchvision ResNet.

    Returns:
        (trunk, report). BN's ``num_batches_tracked`` counters are dropped (Detectron2 has none).

    Raises:
        ConversionError: no trunk weights were found.
    """
    report = ConversionReport()
    names = {k[len("module.") :] if k.startswith("module.") else k: k for k in state}
    prefix = next((p for p in TRUNK_PREFIXES if any(n.startswith(p) for n in names)), "")
    is_torchvision = not prefix and "conv1.weight" in names and "layer1.0.conv1.weight" in names
    report.source_format = (
        "torchvision ResNet" if is_torchvision else f"pre-trainer checkpoint (trunk under "
        f"'{prefix or '<root>'}')"
    )
    trunk: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, original in names.items():
        if is_torchvision:
            new = _torchvision_to_d2(name)
        else:
            new = name[len(prefix) :] if prefix and name.startswith(prefix) else None
            if new is None and not prefix and _is_d2_trunk_name(name):
                new = name
            if new is not None and not _is_d2_trunk_name(new):
                new = None
        if new is None or new.endswith("num_batches_tracked"):
            report.dropped.append(original)
            continue
        trunk[new] = state[original].detach().cpu()
        report.kept.append(new)
        if new != original:
            report.renamed.append((original, new))
    if not trunk:
        raise ConversionError(
            "no ResNet trunk weights found (looked for torchvision names 'conv1.weight', "
            f"'layer1.*' or Detectron2 names under {', '.join(TRUNK_PREFIXES)} or the root)"
        )
    return trunk, report


def _blocks_per_stage(trunk: Mapping[str, torch.Tensor]) -> List[int]:
    counts = []
    for stage in range(2, 6):
        ids = {int(k.split(".")[1]) for k in trunk if k.startswith(f"res{stage}.")}
        counts.append(max(ids) + 1 if ids else 0)
    return counts


def infer_depth(trunk: Mapping[str, torch.Tensor]) -> int:
    """ResNet depth (18, 34, 50, 101, 152) from the block counts and the block type.

    Raises:
        ConversionError: the structure matches no ResNet.
    """
    counts = _blocks_per_stage(trunk)
    bottleneck = any(k.endswith("conv3.weight") for k in trunk)
    for depth, (spec, is_bottleneck) in RESNET_SPECS.items():
        if counts == spec and bottleneck == is_bottleneck:
            return depth
    raise ConversionError(
        f"trunk with blocks per stage {counts} ({'bottleneck' if bottleneck else 'basic'} blocks) "
        "is no ResNet-18/34/50/101/152"
    )


def _reference_shapes(depth: int) -> Dict[str, Tuple[int, ...]]:
    # shapes of Detectron2's own ResNet of that depth (the names Mask R-CNN loads)
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with torch.device("meta"):
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def validate_trunk(trunk: Mapping[str, torch.Tensor], depth: Optional[int] = None) -> int:
    """Check names and shapes against Detectron2's ResNet of the inferred (or given) depth.

    Args:
        trunk: Detectron2-named trunk tensors.
        depth: the depth the trunk claims; inferred from the structure when None.

    Returns:
        the depth.

    Raises:
        ConversionError: missing or extra tensors, or a shape that differs.
    """
    inferred = infer_depth(trunk)
    if depth is not None and depth != inferred:
        raise ConversionError(f"trunk claims ResNet-{depth} but its structure is ResNet-{inferred}")
    reference = _reference_shapes(inferred)
    missing = sorted(set(reference) - set(trunk))
    extra = sorted(set(trunk) - set(reference))
    wrong = [
        f"{k}: {tuple(trunk[k].shape)} != {reference[k]}"
        for k in reference
        if k in trunk and tuple(trunk[k].shape) != reference[k]
    ]
    if missing or extra or wrong:
        problems = (
            ([f"missing {missing[:5]}"] if missing else [])
            + ([f"unexpected {extra[:5]}"] if extra else [])
            + ([f"shape {w}" for w in wrong[:5]])
        )
        raise ConversionError(f"trunk does not match ResNet-{inferred}: " + "; ".join(problems))
    return inferred


def to_torchvision(
    trunk: Mapping[str, torch.Tensor], depth: int
) -> "OrderedDict[str, torch.Tensor]":
    """Detectron2 trunk names -> a state dict ``torchvision.models.resnet{depth}()`` loads strictly.

    The classifier ``fc`` is not pre-trained; it is taken from a fresh torchvision model so that
    ``strict=True`` loading works, and BN counters are set to zero.
    """
    import torchvision

    reference = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    d2_to_tv = {}
    for tv_name in reference:
        d2_name = _torchvision_to_d2(tv_name)
        if d2_name is not None:
            d2_to_tv[d2_name] = tv_name
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for tv_name, ref in reference.items():
        d2_name = _torchvision_to_d2(tv_name)
        if d2_name is not None and d2_name in trunk:
            out[tv_name] = trunk[d2_name].clone()
        else:  # fc.* and num_batches_tracked
            out[tv_name] = torch.zeros_like(ref) if tv_name.endswith("num_batches_tracked") else ref
    return out


def save_detectron2(trunk: Mapping[str, torch.Tensor], path: str, author: str = "ssprl_d2") -> None:
    """Write ``{"model": {name: ndarray}, "__author__", "matching_heuristics": True}`` atomically.

    With bare ResNet names, Detectron2's checkpointer maps the tensors onto
    ``backbone.bottom_up.*`` of an FPN model (or ``backbone.*`` of a plain ResNet).
    """
    payload = {
        "model": {k: v.numpy() for k, v in trunk.items()},
        "__author__": author,
        "matching_heuristics": True,
    }
    atomic_write(path, lambda f: pickle.dump(payload, f))


def save_torchvision(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write a torchvision state dict atomically."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


# ---------------------------------------------------------------------------- ViT
# prefixes under which a pre-trainer keeps its ViT (local-global: the student ``backbone.``)
VIT_PREFIXES = ("backbone.net.", "backbone.", "")
# timm ViT tensors that Detectron2's ViT has no place for: the CLS token (ViTDet drops it) and
# the final norm (ViTDet's pyramid reads the last block's output)
_TIMM_ONLY = ("cls_token", "norm.weight", "norm.bias")
# what Detectron2's ViT prefixes its trunk with inside a ViTDet model
VITDET_PREFIX = "backbone.net."


def is_vit_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a flat state dict holds a ViT trunk (timm or Detectron2 names, any prefix)."""
    return any(k.endswith("blocks.0.attn.qkv.weight") for k in state) and any(
        k.endswith("patch_embed.proj.weight") for k in state
    )


def extract_vit(
    state: Mapping[str, torch.Tensor]
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """The ViT trunk under timm names (``cls_token``, ``pos_embed``, ``patch_embed.*``,
    ``blocks.*``, ``norm.*``), without heads or teacher.

    Args:
        state: a local-global checkpoint (student under ``backbone.``) or a timm ViT state dict.

    Returns:
        (trunk, report).

    Raises:
        ConversionError: no ViT trunk found.
    """
    report = ConversionReport()
    names = {k[len("module.") :] if k.startswith("module.") else k: k for k in state}
    prefix = next(
        (p for p in VIT_PREFIXES if f"{p}patch_embed.proj.weight" in names), None
    )
    if prefix is None:
        raise ConversionError("no ViT trunk found (no '<prefix>patch_embed.proj.weight')")
    report.source_format = (
        f"pre-trainer checkpoint (ViT under '{prefix}')" if prefix else "timm ViT state dict"
    )
    trunk: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, original in names.items():
        new = name[len(prefix) :] if name.startswith(prefix) else None
        keep = new is not None and (
            new in ("cls_token", "pos_embed", "norm.weight", "norm.bias")
            or new.startswith(("patch_embed.", "blocks."))
        )
        if not keep:
            report.dropped.append(original)
            continue
        trunk[new] = state[original].detach().cpu()
        report.kept.append(new)
        if new != original:
            report.renamed.append((original, new))
    return trunk, report


def _vit_sizes(trunk: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    # the sizes a ViT's tensors fix (the number of heads leaves no trace in the shapes)
    proj = trunk["patch_embed.proj.weight"]
    blocks = {int(k.split(".")[1]) for k in trunk if k.startswith("blocks.")}
    positions = trunk["pos_embed"].shape[1] - (1 if "cls_token" in trunk else 0)
    grid = int(round(math.sqrt(positions)))
    if grid * grid != positions:
        raise ConversionError(f"pos_embed has {positions} patch positions, not a square grid")
    return {
        "embed_dim": int(proj.shape[0]),
        "patch_size": int(proj.shape[-1]),
        "depth": max(blocks) + 1 if blocks else 0,
        "mlp_ratio": trunk["blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
        "img_size": grid * int(proj.shape[-1]),
    }


def validate_vit(trunk: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Check a timm-named ViT trunk against timm's ViT of the sizes its tensors imply.

    Returns:
        the sizes (embed_dim, patch_size, depth, mlp_ratio, img_size).

    Raises:
        ConversionError: missing, extra or misshapen tensors, or no CLS token.
    """
    import timm

    if "cls_token" not in trunk or "pos_embed" not in trunk:
        raise ConversionError("the ViT has no CLS token or no absolute position embeddings")
    sizes = _vit_sizes(trunk)
    with torch.device("meta"):
        reference = timm.create_model(
            "vit_small_patch16_224", pretrained=False, num_classes=0, num_heads=1, **sizes
        ).state_dict()
    _compare(trunk, {k: tuple(v.shape) for k, v in reference.items()}, "timm ViT")
    return sizes


def _compare(trunk, reference: Mapping[str, Tuple[int, ...]], what: str) -> None:
    missing = sorted(set(reference) - set(trunk))
    extra = sorted(set(trunk) - set(reference))
    wrong = [f"{k}: {tuple(trunk[k].shape)} != {reference[k]}"
             for k in reference if k in trunk and tuple(trunk[k].shape) != reference[k]]
    if missing or extra or wrong:
        problems = (([f"missing {missing[:5]}"] if missing else [])
                    + ([f"unexpected {extra[:5]}"] if extra else [])
                    + [f"shape {w}" for w in wrong[:5]])
        raise ConversionError(f"trunk does not match {what}: " + "; ".join(problems))


def to_vitdet(trunk: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """timm ViT names -> the names Detectron2's ViT has inside a ViTDet model (``backbone.net.``).

    The CLS token and the final norm have no place there (ViTDet keeps the CLS row of
    ``pos_embed``, ``pretrain_use_cls_token``, and drops it when it interpolates).
    """
    return OrderedDict(
        (VITDET_PREFIX + k, v) for k, v in trunk.items() if k not in _TIMM_ONLY
    )


def save_vitdet(trunk: Mapping[str, torch.Tensor], path: str, author: str = "ssprl_d2") -> None:
    """Write ``{"model": {backbone.net.*: ndarray}, "__author__"}`` atomically, exact names (no
    matching heuristics: ViTDet's pyramid and relative position biases stay new)."""
    payload = {
        "model": {k: v.numpy() for k, v in to_vitdet(trunk).items()},
        "__author__": author,
        "matching_heuristics": False,
    }
    atomic_write(path, lambda f: pickle.dump(payload, f))


def select_network(
    state: Mapping[str, torch.Tensor], network: str = "teacher"
) -> Tuple[Dict[str, torch.Tensor], str]:
    """The trunk to export from a momentum method's checkpoint, under ``backbone.``.

    DINO-family evaluation takes the teacher (the better network in DINO's report); MoCo-style
    methods (MLS) have the same choice between the query and the momentum (key) encoder. With
    ``"teacher"`` the momentum copy (``teacher_backbone.*`` / ``key_backbone.*``) is renamed to
    ``backbone.*`` and the student goes to ``student_backbone.*`` (dropped by the export);
    ``"student"`` keeps the student. A checkpoint without a momentum copy is returned unchanged.

    Args:
        state: a flat state dict.
        network: "teacher" (default) or "student".

    Returns:
        (state dict, a description of the network taken: "" without a momentum copy).
    """
    if network not in NETWORKS:
        raise ConversionError(f"unknown network {network!r}; one of {NETWORKS}")
    bare = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    momentum = next((p for p in MOMENTUM_PREFIXES if any(k.startswith(p) for k in bare)), None)
    if momentum is None:
        return dict(state), ""
    if network == "student":
        return dict(state), "the student (backbone.*)"
    out: Dict[str, torch.Tensor] = {}
    for k, v in bare.items():
        if k.startswith("backbone."):
            out["student_" + k] = v
        elif k.startswith(momentum):
            out["backbone." + k[len(momentum) :]] = v
        else:
            out[k] = v
    return out, f"the momentum copy ({momentum[:-1]}.*)"


def convert_checkpoint(
    src: str,
    dst: str,
    output_format: str = "detectron2",
    depth: Optional[int] = None,
    network: str = "teacher",
) -> ConversionReport:
    """Read ``src``, keep the trunk, check it, write ``dst``; nothing is written on any error.

    Args:
        src: input checkpoint.
        dst: output path (``.pkl`` for Detectron2, ``.pth`` for torchvision / timm by convention).
        output_format: "detectron2" (ResNet names, or ``backbone.net.*`` of ViTDet for a ViT),
            "torchvision" (ResNet only) or "timm" (ViT only).
        depth: the ResNet depth the trunk must have (inferred when None).
        network: of a momentum method's checkpoint, "teacher" (its momentum copy, the default)
            or "student" (:func:`select_network`).

    Returns:
        the report of kept, dropped and renamed keys.
    """
    if output_format not in ("detectron2", "torchvision", "timm"):
        raise ConversionError(f"unknown output format {output_format!r}")
    state, container = load_state_dict_any(src)
    state, taken = select_network(state, network)
    if taken:
        container += f", exporting {taken}"
    if is_vit_state(state):
        if output_format == "torchvision" or depth is not None:
            raise ConversionError(
                "the checkpoint holds a ViT: use --format detectron2 (ViTDet) or timm, no --depth"
            )
        trunk, report = extract_vit(state)
        report.source_format += f", {container}"
        sizes = validate_vit(trunk)
        report.architecture = (
            f"ViT (width {sizes['embed_dim']}, depth {sizes['depth']}, patch "
            f"{sizes['patch_size']}, pre-trained at {sizes['img_size']} px)"
        )
        if output_format == "detectron2":
            # the CLS token and final norm have no place in ViTDet; the rest gains its prefix
            original = {new: old for old, new in report.renamed}
            report.dropped += [original.get(k, k) for k in _TIMM_ONLY if k in trunk]
            report.kept = list(to_vitdet(trunk))
            report.renamed = [(original.get(k, k), VITDET_PREFIX + k)
                              for k in trunk if k not in _TIMM_ONLY]
            save_vitdet(trunk, dst)
        else:
            save_torchvision(trunk, dst)
        return report
    if output_format == "timm":
        raise ConversionError("--format timm is for ViT checkpoints; this one holds a ResNet")
    trunk, report = extract_trunk(state)
    report.source_format += f", {container}"
    report.depth = validate_trunk(trunk, depth)
    if output_format == "detectron2":
        save_detectron2(trunk, dst)
    else:
        save_torchvision(to_torchvision(trunk, report.depth), dst)
    return report


# the command line of tools/convert_weights.py (installed: ssprl-convert)
CLI_DOC = """Export the trunk (ResNet or ViT) of a pre-training checkpoint for fine-tuning.

    # SS-PRL checkpoint -> Detectron2 weights (.pkl) for Mask R-CNN
    python tools/convert_weights.py output/ssprl_R_50_200ep_coco2014/model_final.pth ssprl_r50.pkl
    # -> torchvision format, for other toolkits
    python tools/convert_weights.py model_final.pth ssprl_r50_tv.pth --format torchvision
    # a torchvision ResNet state dict works as input too
    python tools/convert_weights.py resnet50.pth resnet50_d2.pkl
    # local-global ViT checkpoint -> ViTDet weights (backbone.net.*) for Mask R-CNN
    python tools/convert_weights.py output/localglobal_ViT_S_16_800ep_coco2017/model_final.pth \
        localglobal_vit_s16.pkl
    # -> a timm state dict: timm.create_model("vit_small_patch16_224", pretrained=False,
    #    num_classes=0).load_state_dict(torch.load(...), strict=True)
    python tools/convert_weights.py model_final.pth localglobal_vit_s16_timm.pth --format timm

Only trunk weights are written (heads, prototypes, g_phi and queues are dropped); the tool prints
what it kept, dropped and renamed, and writes nothing on any error (non-zero exit). Fine-tune the
exported weights with the deltas self-supervised RGB weights need
(configs/COCO-InstanceSegmentation/Base-RCNN-FPN-SSL.yaml):
INPUT.FORMAT RGB, PIXEL_MEAN [123.675, 116.280, 103.530], PIXEL_STD [58.395, 57.120, 57.375],
RESNETS.STRIDE_IN_1X1 False, BACKBONE.FREEZE_AT 0. A ViT export loads into
configs/COCO-InstanceSegmentation/Base-ViTDet-SSL.yaml (MODEL.VIT sizes as pre-trained; the
teacher, the CLS token and the final norm are dropped).
"""


def main(argv: Optional[List[str]] = None) -> int:
    """The converter's command line; 0 on success, 2 (one line on stderr) on a bad input."""
    p = argparse.ArgumentParser(prog="convert_weights", description=CLI_DOC, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="checkpoint (.pth/.pkl) of tools/train_net.py or torchvision")
    p.add_argument("output", help="file to write")
    p.add_argument("--format", choices=["detectron2", "torchvision", "timm"], default="detectron2",
                   help="detectron2 (ResNet or ViTDet names), torchvision (ResNet), timm (ViT)")
    p.add_argument("--depth", type=int, choices=[18, 34, 50, 101, 152],
                   help="ResNet depth the trunk must have (default: inferred)")
    p.add_argument("--network", choices=NETWORKS, default="teacher",
                   help="of an MLS or local-global checkpoint: the momentum encoder / teacher "
                        "(default, as DINO evaluates) or the student")
    args = p.parse_args(argv)
    try:
        report = convert_checkpoint(args.input, args.output, args.format, args.depth,
                                    args.network)
    except ConversionError as e:
        print(f"convert_weights: error: {e}; nothing written", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.format} weights to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
