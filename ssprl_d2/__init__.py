"""ssprl_d2: self-supervised pre-training on scene images (SS-PRL, MLS, local-global ViT) as a
Detectron2 extension.

``import ssprl_d2`` registers the meta-architectures (``SSPRL``, ``MLS``, ``LocalGlobal``,
``MultiLabelClassifier``), the ViTDet backbone builder (``build_vitdet_backbone``) and the
project's datasets in Detectron2's own registries.

Layout: ``config.py`` (every config key), ``modeling/`` (one file per meta-architecture and the
parts they share), ``data/`` (registrations, mappers, loaders, views, augmentation), ``engine/``
(optimiser, hooks, checkpointing), ``evaluation/`` (multi-label mAP), ``convert.py`` (weight
export), ``study.py`` (comparison study), ``benchmark/`` (speed figures).
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ssprl_d2 needs Detectron2, which is not on PyPI under its own name. Run `make test` or "
        "`bash tools/setup_env.sh` (installs it into .venv), or install it yourself: "
        "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
        " (or, without GitHub access: pip install --no-deps --only-binary=:all: "
        "--python-version 3.10 --target <site-packages> sal-detectron2==0.7.2)."
    ) from e

from .config import add_ssprl_config, load_config
from .data.builtin import register_builtin_datasets, register_from_cfg
from .modeling import MLS, SSPRL, LocalGlobal, MultiLabelClassifier, get_task

register_builtin_datasets()

__all__ = [
    "add_ssprl_config",
    "load_config",
    "get_task",
    "register_from_cfg",
    "LocalGlobal",
    "MLS",
    "MultiLabelClassifier",
    "SSPRL",
]
__version__ = "0.1.0"
