#!/usr/bin/env python
"""ssprl_d2: Self-Supervised Pyramid Representation Learning as a Detectron2 extension.

Detectron2 is not on PyPI under its own name, so it cannot be listed in install_requires;
`tools/setup_env.sh` (run by `make`) installs it. See README.md.
"""
from setuptools import find_packages, setup

setup(
    name="ssprl_d2",
    version="0.1.0",
    description="SS-PRL self-supervised pyramid pre-training for Detectron2",
    license="MIT",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "kornia",
        "timm",
        "scikit-learn",
        "PyYAML",
    ],
)
