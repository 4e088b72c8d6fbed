"""ssprl_d2: SS-PRL self-supervised pyramid pre-training as a Detectron2 extension.

``import ssprl_d2`` registers the ``SSPRL`` meta-architecture and the project's datasets in
Detectron2's own registries.
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

from .config import add_ssprl_config
from .data.datasets import register_builtin_datasets, register_from_cfg
from .modeling import SSPRL

register_builtin_datasets()

__all__ = ["add_ssprl_config", "register_from_cfg", "SSPRL"]
__version__ = "0.1.0"
