#!/usr/bin/env python
"""ssprl_d2: Self-Supervised Pyramid Representation Learning as a Detectron2 extension.

Detectron2 is not on PyPI under its own name, so it cannot be listed in install_requires;
`tools/setup_env.sh` (run by `make`) installs it. See README.md.

The wheel carries the repository's configs/ as ssprl_d2/model_zoo/configs (linked or copied at
build time, as Detectron2 does for its model zoo), so an installed package finds them
(ssprl_d2.model_zoo.get_config_file, and `ssprl-train --config-file configs/<name>.yaml` from any
folder).
"""
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def packaged_configs() -> list:
    """Link (or copy) configs/ into the package; the list of its files for package_data."""
    source = os.path.join(HERE, "configs")
    target = os.path.join(HERE, "ssprl_d2", "model_zoo", "configs")
    if os.path.isdir(source):
        if os.path.islink(target):
            os.unlink(target)
        elif os.path.isdir(target):
            shutil.rmtree(target)
        try:
            os.symlink(source, target)
        except OSError:
            shutil.copytree(source, target)
    root = os.path.join(HERE, "ssprl_d2", "model_zoo")
    return [
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(target, followlinks=True)
        for f in files
        if f.endswith(".yaml")
    ]


setup(
    name="ssprl_d2",
    version="0.1.0",
    description="SS-PRL self-supervised pyramid pre-training for Detectron2",
    license="MIT",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    package_data={"ssprl_d2.model_zoo": packaged_configs()},
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
    entry_points={
        "console_scripts": [
            # tools/train_net.py: pre-train, fine-tune, --eval-only
            "ssprl-train = ssprl_d2.engine.train:cli",
            # tools/convert_weights.py: export a pre-trained trunk
            "ssprl-convert = ssprl_d2.convert:main",
            # tools/gpu_check.py: check a GPU machine
            "ssprl-gpu-check = ssprl_d2.benchmark.gpu_check:main",
        ]
    },
)
