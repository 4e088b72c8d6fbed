"""The task a config trains, named once: what ``tools/train_net.py`` dispatches on.

Each meta-architecture of this project declares its task as a class attribute ``task``
(``"pretrain"`` for the self-supervised pre-trainers, ``"multilabel"`` for the classifier of the
multi-label protocols). Detectron2's ``SemanticSegmentor`` (semantic FPN) is ``"semseg"``; every
other Detectron2 meta-architecture (Mask R-CNN, Faster R-CNN, ...) is ``"detection"``. Loaders,
optimisers, hooks and evaluators are chosen from this one value.
"""
from detectron2.modeling import META_ARCH_REGISTRY

__all__ = ["TASKS", "get_task"]

# every value get_task can return
TASKS = ("pretrain", "multilabel", "detection", "semseg")
# Detectron2's own meta-architectures that are not detectors (they declare no task themselves)
_DETECTRON2_TASKS = {"SemanticSegmentor": "semseg"}


def get_task(cfg) -> str:
    """The task of ``cfg.MODEL.META_ARCHITECTURE``.

    Args:
        cfg: a Detectron2 config.

    Returns:
        one of :data:`TASKS`.

    Raises:
        KeyError: the meta-architecture is not registered (Detectron2's own message).
        ValueError: it declares a task outside :data:`TASKS`.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    task = getattr(arch, "task", _DETECTRON2_TASKS.get(arch.__name__, "detection"))
    if task not in TASKS:
        raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} declares task {task!r}; known: {TASKS}")
    return task
