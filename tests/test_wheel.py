"""The package works installed from a wheel, without the checkout (console commands, configs)."""
import os
import subprocess
import sys
import zipfile

import pytest
from util import REPO

COMMANDS = ("ssprl-train", "ssprl-convert", "ssprl-gpu-check")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel of this checkout and install it (no dependencies) into a fresh target."""
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                          REPO], check=True, cwd=root)  # fmt: skip
    [wheel] = list((root / "dist").glob("ssprl_d2-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, cwd=root)  # fmt: skip
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(root / "site"))
    return wheel, root / "site", elsewhere, env


def test_the_wheel_carries_the_package_and_the_configs_but_no_tools(installed):
    wheel, _, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "ssprl_d2/engine/train.py" in names
    assert "ssprl_d2/model_zoo/configs/ssprl_pretrain.yaml" in names
    assert "ssprl_d2/model_zoo/configs/Pretrain/Base-SSPRL.yaml" in names
    assert not any(n.startswith(("tools/", "tests/")) for n in names)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_console_command_answers_help_from_outside_the_checkout(installed, command):
    _, site, elsewhere, env = installed
    proc = subprocess.run([str(site / "bin" / command), "--help"], cwd=elsewhere, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "usage:" in proc.stdout


def test_the_installed_package_finds_its_configs_and_not_the_checkout(installed):
    _, site, elsewhere, env = installed
    code = (
        "import ssprl_d2, ssprl_d2.model_zoo as z; "
        "from ssprl_d2 import load_config; "
        "print(ssprl_d2.__file__); "
        "cfg = load_config(z.get_config_file('configs/ssprl_pretrain.yaml')); "
        "print(cfg.MODEL.META_ARCHITECTURE, cfg.SOLVER.IMS_PER_BATCH)"
    )
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=elsewhere, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    where, arch = proc.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(site))
    assert arch == "SSPRL 128"
