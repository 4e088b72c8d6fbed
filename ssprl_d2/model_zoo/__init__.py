"""The shipped configs, from a checkout or an installed package (as ``detectron2.model_zoo``).

A wheel carries a copy of the repository's ``configs/`` as ``ssprl_d2/model_zoo/configs``, made
at build time by ``setup.py``; in a checkout that has not been built, the repository's own
``configs/`` is used.
"""
import os
from typing import Optional

__all__ = ["configs_dir", "get_config_file", "resolve_config_file"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def configs_dir() -> str:
    """The folder of the shipped configs: the package's copy, else the checkout's ``configs/``."""
    packaged = os.path.join(_HERE, "configs")
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(os.path.dirname(os.path.dirname(_HERE)), "configs")


def get_config_file(name: str) -> str:
    """The path of a shipped config.

    Args:
        name: relative to ``configs/``, e.g. ``"ssprl_pretrain.yaml"`` or
            ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml"`` (a leading
            ``configs/`` is accepted).

    Returns:
        the absolute path.

    Raises:
        FileNotFoundError: no shipped config has that name.
    """
    rel = name[len("configs/"):] if name.startswith("configs/") else name
    path = os.path.join(configs_dir(), rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name!r} is not one of the shipped configs under {configs_dir()}")
    return path


def resolve_config_file(path: str) -> Optional[str]:
    """``path`` if it is a file, else the shipped config of that name, else None.

    ``configs/ssprl_pretrain.yaml`` therefore works from any folder with an installed package.
    """
    if os.path.isfile(path):
        return path
    try:
        return get_config_file(path)
    except FileNotFoundError:
        return None
