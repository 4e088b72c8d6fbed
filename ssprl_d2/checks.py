"""User mistakes caught before any work starts, each as one line that names the problem.

Every public command goes through these checks before it builds a model or writes a file: the
config file and its ``_BASE_`` chain exist and parse, every key exists (with "did you mean"),
values have the key's type, the datasets are registered and their files are where the catalog
says, weight files and the ``--resume`` target are readable checkpoints, and the settings fit
the machine. A failed check raises :class:`UserError`; :func:`run_command` turns it into
``<command>: error: <message>`` on stderr and exit status 2 (a traceback is for a bug).
"""
import difflib
import glob
import os
import re
import sys
from typing import Callable, Iterable, List, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from .config import add_ssprl_config, renamed_key
from .convert import ConversionError, load_state_dict_any
from .model_zoo import configs_dir, resolve_config_file

__all__ = [
    "UserError",
    "check_datasets",
    "check_machine",
    "check_resume_target",
    "check_weights_file",
    "checked_config_file",
    "load_config_checked",
    "run_command",
]

# metadata fields that name files or folders a dataset needs (Detectron2's and ours)
_DATA_PATHS = ("json_file", "image_root", "dirname", "image_dir", "gt_dir", "sem_seg_root")
_LAYOUT_HINT = (
    "datasets are found under $DETECTRON2_DATASETS (default ./datasets), in Detectron2's layout "
    "(e.g. coco/annotations/instances_train2014.json, coco/train2014/; VOC2007/...): see "
    "docs/getting_started.md"
)


class UserError(Exception):
    """A mistake in a command's input: the message says what, which file or key, what to do."""


def run_command(command: str, fn: Callable[[], int]) -> int:
    """Run a command's body; a :class:`UserError` becomes one line on stderr and status 2.

    Args:
        command: the command's name as the user typed it (``train_net``, ``probe``, ...).
        fn: the body; returns the exit status.
    """
    try:
        return fn()
    except UserError as e:
        print(f"{command}: error: {e}", file=sys.stderr, flush=True)
        return 2


def _flat_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys += _flat_keys(v, full + ".") if isinstance(v, CfgNode) else [full]
    return keys


def _did_you_mean(key: str, known: Sequence[str], sep: str = ".") -> str:
    """" ; did you mean A or B?" for the known names closest to ``key`` (whole, else the last
    ``sep``-separated part: a misspelt leaf under the right node, a file in another folder)."""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    if not close:
        leaf = key.rsplit(sep, 1)[-1]
        leaves = {k.rsplit(sep, 1)[-1]: k for k in known}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.8)]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _base_chain(config_file: str) -> List[str]:
    """The file and every ``_BASE_`` it inherits, checked to exist and parse."""
    chain, current = [], config_file
    while current:
        if current in chain:
            raise UserError(f"config file {current} inherits from itself through _BASE_")
        chain.append(current)
        try:
            with open(current) as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"config file {current} is not valid YAML{where}: {problem}") from None
        except OSError as e:
            raise UserError(f"config file {current} cannot be read: {e.strerror}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"config file {current} is not a YAML mapping of keys to values")
        base = data.get("_BASE_")
        if not base:
            break
        nxt = base if os.path.isabs(base) else os.path.join(os.path.dirname(current), base)
        if not os.path.isfile(nxt):
            raise UserError(f"config file {current} has _BASE_ {base!r}, which does not exist "
                            f"(looked for {nxt})")  # fmt: skip
        current = nxt
    return chain


def _merge_error(e: Exception, where: str, known: Sequence[str]) -> UserError:
    """A Detectron2 / yacs merge error as a user message."""
    text = str(e).strip("'\"")
    missing = re.search(r"Non-existent (?:config )?key: ([\w.]+)", text)
    if missing:
        key = missing.group(1)
        new = renamed_key(key)
        if new is not None:
            return UserError(f"{where}: config key {key} was renamed {new}")
        return UserError(f"{where}: unknown config key {key}{_did_you_mean(key, known)}")
    mismatch = re.search(
        r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
        r"for config key: ([\w.]+)", text, re.S,
    )  # fmt: skip
    if mismatch:
        want, got, default, value, key = mismatch.groups()
        hint = f" (write {value}.0)" if want == "float" and got == "int" else ""
        return UserError(f"{where}: {key} takes a {want} (now {default}), got {got} "
                         f"{value}{hint}")  # fmt: skip
    if "odd length" in text:
        return UserError(f"{where}: the KEY VALUE overrides must come in pairs; got {text}")
    return UserError(f"{where}: {text}")


def checked_config_file(config_file: str) -> str:
    """The config file to read (a path, or a shipped config's name), checked with its ``_BASE_``
    chain to exist and parse; else a :class:`UserError`."""
    if not config_file:
        raise UserError("no config file: give --config-file <file.yaml>")
    path = resolve_config_file(config_file)
    if path is None:
        if os.path.isdir(config_file):
            raise UserError(f"config file {config_file} is a folder; give a .yaml file in it")
        shipped = sorted(glob.glob(os.path.join(configs_dir(), "**", "*.yaml"), recursive=True))
        names = [os.path.join("configs", os.path.relpath(p, configs_dir())) for p in shipped]
        raise UserError(f"config file {config_file} does not exist"
                        f"{_did_you_mean(config_file, names, sep='/')}")  # fmt: skip
    _base_chain(path)
    return path


def load_config_checked(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """The project's config of ``config_file`` and ``opts``, or a :class:`UserError`.

    Args:
        config_file: a path, or the name of a shipped config (``configs/...``).
        opts: KEY VALUE overrides from the command line.

    Returns:
        the merged config (not frozen).
    """
    path = checked_config_file(config_file)
    cfg = get_cfg()
    add_ssprl_config(cfg)
    known = _flat_keys(cfg)
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError) as e:
        raise _merge_error(e, f"config file {path}", known) from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise _merge_error(e, "command line", known) from None
    return cfg


def check_datasets(names: Iterable[str], key: str) -> None:
    """Every dataset is registered and its files exist where the catalog says.

    Args:
        names: dataset names (``DATASETS.TRAIN`` or ``DATASETS.TEST``).
        key: the config key, for the message.
    """
    registered = list(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise UserError(f"{key}: dataset {name!r} is not registered"
                            f"{_did_you_mean(name, registered)} (your own data: "
                            "DATASETS.PRETRAIN.REGISTER [name, json_file, image_root])")  # fmt: skip
        meta = MetadataCatalog.get(name)
        if meta.get("generated_on_first_use", False):
            continue
        for field in _DATA_PATHS:
            path = meta.get(field, None)
            if isinstance(path, str) and path and not os.path.exists(path):
                raise UserError(f"{key}: dataset {name!r} needs its {field} {path}, which does not "
                                f"exist; {_LAYOUT_HINT}")  # fmt: skip
        for path in meta.get("required_paths", ()):
            if not os.path.exists(path):
                raise UserError(f"{key}: dataset {name!r} needs {path}, which does not exist; "
                                f"{meta.get('required_hint', _LAYOUT_HINT)}")  # fmt: skip


def _is_remote(path: str) -> bool:
    return "://" in path


def check_weights_file(path: str, key: str = "MODEL.WEIGHTS") -> None:
    """``path`` is a readable checkpoint (``.pth``, ``.pkl``) holding tensors.

    Args:
        path: the file; a URL (``detectron2://``, ``https://``) is left to Detectron2.
        key: the setting that names it, for the message.
    """
    if not path or _is_remote(path):
        return
    if os.path.isdir(path):
        raise UserError(f"{key} {path} is a folder; give a checkpoint file (.pth or .pkl)")
    if not os.path.isfile(path):
        hint = " (export one with tools/convert_weights.py)" if path.endswith(".pkl") else ""
        raise UserError(f"{key} {path} does not exist{hint}")
    try:
        load_state_dict_any(path)
    except ConversionError as e:
        raise UserError(f"{key}: {e}; give a checkpoint written by tools/train_net.py or "
                        "tools/convert_weights.py") from None  # fmt: skip


def check_resume_target(output_dir: str) -> None:
    """The checkpoint ``OUTPUT_DIR/last_checkpoint`` names is readable (when there is one).

    A broken one (an interrupted copy, a full disk) is named, with the previous checkpoint to use.
    """
    marker = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(marker):
        return
    with open(marker) as f:
        name = f.read().strip()
    path = name if os.path.isabs(name) else os.path.join(output_dir, name)
    others = sorted(
        p for p in glob.glob(os.path.join(output_dir, "model_*.pth"))
        if os.path.abspath(p) != os.path.abspath(path)
    )  # fmt: skip
    advice = (f"; to continue from the previous one, write {os.path.basename(others[-1])} into "
              f"{marker}" if others else "; remove it to start over")  # fmt: skip
    try:
        check_weights_file(path, "--resume")
    except UserError as e:
        raise UserError(f"{marker} names {name}, which is not a readable checkpoint ({e})"
                        f"{advice}") from None  # fmt: skip


def check_machine(cfg: CfgNode, num_gpus: int, num_machines: int) -> None:
    """The settings fit this machine and the number of processes.

    Args:
        cfg: the merged config.
        num_gpus, num_machines: ``--num-gpus`` and ``--num-machines``.
    """
    import torch

    device = str(cfg.MODEL.DEVICE)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE is {device!r} but CUDA is not available here: add "
                        "`MODEL.DEVICE cpu` to the command line, or use a config under "
                        "configs/quick_schedules/")  # fmt: skip
    if cuda and num_gpus > torch.cuda.device_count():
        raise UserError(f"--num-gpus {num_gpus} but this machine has "
                        f"{torch.cuda.device_count()} GPUs: use --num-gpus "
                        f"{torch.cuda.device_count()}")  # fmt: skip
    world = max(1, num_gpus) * max(1, num_machines)
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    if batch % world:
        raise UserError(f"SOLVER.IMS_PER_BATCH {batch} is not divisible by the {world} processes "
                        f"(--num-gpus x --num-machines): use a multiple of {world}")  # fmt: skip
    if int(cfg.DATALOADER.NUM_WORKERS) < 0:
        raise UserError(f"DATALOADER.NUM_WORKERS is {cfg.DATALOADER.NUM_WORKERS}: use 0 (load "
                        "in the training process) or more")  # fmt: skip
    norms = {
        cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM,
        cfg.MODEL.ROI_MASK_HEAD.NORM, cfg.MODEL.SSPRL.HEAD_NORM,
    }  # fmt: skip
    if not cuda and world > 1 and "SyncBN" in norms:
        raise UserError("SyncBN (MODEL.RESNETS.NORM, MODEL.FPN.NORM, the ROI heads' or "
                        "MODEL.SSPRL.HEAD_NORM) needs CUDA with several processes: on the CPU use "
                        "naiveSyncBN (gloo) or BN")  # fmt: skip
