"""A DetectionCheckpointer whose files are never left half-written."""
import os
from typing import Any, Iterable, Optional, Tuple, Union

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..atomic import atomic_write, atomic_write_bytes

__all__ = [
    "AtomicDetectionCheckpointer",
    "WeightsMismatchError",
    "verify_loaded_weights",
]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """Saves to a temporary file and renames it, then updates ``last_checkpoint`` the same way.

    A crash while writing leaves the previous checkpoint and its ``last_checkpoint`` tag intact,
    so ``--resume`` always finds a complete file.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _load_model(self, checkpoint: Any) -> Any:
        # kept so callers can check what MODEL.WEIGHTS left unloaded (verify_loaded_weights)
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(
            os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode()
        )


class WeightsMismatchError(RuntimeError):
    """MODEL.WEIGHTS does not fill the part of the model that must come from it."""


def _file_depth(path: str) -> Optional[int]:
    # best effort: the ResNet depth stored in a weights file, for the error message
    from ..convert import ConversionError, extract_trunk, infer_depth, load_state_dict_any

    try:
        state, _ = load_state_dict_any(path)
        return infer_depth(extract_trunk(state)[0])
    except (ConversionError, OSError):
        return None


def verify_loaded_weights(
    incompatible: Any,
    model_keys: Iterable[str],
    weights: str,
    required_prefix: Union[str, Tuple[str, ...]],
    depth: int,
    exempt: Tuple[str, ...] = (),
) -> None:
    """Raise if ``weights`` left any tensor under ``required_prefix`` unloaded or mis-shaped.

    Detectron2 only warns about such tensors, which silently trains or evaluates a partly random
    model; here it is an error naming the file and, for a depth mismatch, both depths.

    Args:
        incompatible: what fvcore's ``_load_model`` returned (missing keys, incorrect shapes).
        model_keys: names in the model's state dict.
        weights: the MODEL.WEIGHTS path (for the message).
        required_prefix: "" for every tensor (evaluation), "backbone.bottom_up." for a trunk, or
            a tuple of prefixes (a C4 trunk: the backbone and the res5 blocks of the box head).
        depth: MODEL.RESNETS.DEPTH of the config.
        exempt: name fragments of tensors under the prefix that fine-tuning adds (ViTDet's
            relative position biases, ".rel_pos_").
    """
    def required(key: str) -> bool:
        return (
            key.startswith(required_prefix)
            and not key.endswith("num_batches_tracked")
            and not any(part in key for part in exempt)
        )

    if not any(required(k) for k in model_keys):
        return
    missing = [k for k in incompatible.missing_keys if required(k)]
    shapes = [s for s in incompatible.incorrect_shapes if required(s[0])]
    if not missing and not shapes:
        return
    file_depth = _file_depth(weights)
    parts = [f"MODEL.WEIGHTS {weights!r} does not fit this model"]
    if file_depth is not None and file_depth != depth:
        parts.append(f"it holds a ResNet-{file_depth} trunk, the config asks for "
                     f"MODEL.RESNETS.DEPTH {depth}")
    if shapes:
        key, file_shape, model_shape = shapes[0]
        parts.append(f"{len(shapes)} tensors differ in shape, e.g. {key}: file "
                     f"{tuple(file_shape)} vs model {tuple(model_shape)}")
    if missing:
        parts.append(f"{len(missing)} tensors are missing from it, e.g. {missing[:3]}")
    raise WeightsMismatchError("; ".join(parts))
