"""Every config file named in the package, in tools/, in the configs and in the docs exists.

A config that moved while a caller kept its old path fails only when that caller runs, which for
the GPU check and the SLURM launcher means on a rented GPU node; this test finds it on any CPU.
"""
import glob
import os
import re
from typing import Iterator, List, Tuple

import pytest

from util import REPO

CONFIGS = os.path.join(REPO, "configs")
# "configs/<...>.yaml" written as a path (commands in docs, docstrings, comments, Makefile)
_PATH = re.compile(r"(?<![\w./-])configs/[\w./-]+?\.yaml")
# os.path.join(<root>, "configs", "<dir>", ..., "<name>.yaml"), possibly over several lines
_JOIN = re.compile(r"""["']configs["']((?:\s*,\s*["'][^"']+["'])+)""")
# a quoted name; one starting with "_" is a suffix joined to another name (``_random_init.yaml``)
_QUOTED = re.compile(r"""["']([\w./-]*\w\.yaml)["']""")
_BASE = re.compile(r"""^_BASE_:\s*["']?([^"'\s#]+)""", re.M)


def _files(*patterns: str) -> List[str]:
    out: List[str] = []
    for pattern in patterns:
        out += glob.glob(os.path.join(REPO, pattern), recursive=True)
    return sorted(set(out))


def _code_references(path: str, text: str) -> Iterator[Tuple[str, str]]:
    """(literal as written, resolved path) of the config names in Python or shell code."""
    spans = []
    for m in _JOIN.finditer(text):
        parts = re.findall(r"""["']([^"']+)["']""", m.group(1))
        if parts[-1].endswith(".yaml"):
            spans.append(m.span())
            yield m.group(0), os.path.join(CONFIGS, *parts)
    for m in _QUOTED.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        name = m.group(1)
        if name.startswith("_"):
            continue
        if name.startswith("configs/"):
            yield name, os.path.join(REPO, name)
        elif "/" in name:
            yield name, os.path.join(CONFIGS, name)
        else:
            # a bare file name, joined to a configs folder elsewhere: it must name one config
            found = glob.glob(os.path.join(CONFIGS, "**", name), recursive=True)
            yield name, found[0] if len(found) == 1 else os.path.join(CONFIGS, "?", name)


def _references() -> List[Tuple[str, str, str]]:
    """(file, literal, resolved path) of every config reference in the repository's text."""
    refs: List[Tuple[str, str, str]] = []
    code = _files("ssprl_d2/**/*.py", "tools/*.py", "tools/*.sh")
    docs = _files("README.md", "*/README.md", "docs/**/*.md", "Makefile", "configs/**/*.yaml")
    for path in code + docs:
        with open(path) as f:
            text = f.read()
        rel = os.path.relpath(path, REPO)
        found = list(_code_references(path, text)) if path in code else []
        found += [(m.group(0), os.path.join(REPO, m.group(0))) for m in _PATH.finditer(text)]
        if path.endswith(".yaml"):
            found += [
                (m.group(1), os.path.join(os.path.dirname(path), m.group(1)))
                for m in _BASE.finditer(text)
            ]
        refs += [(rel, literal, resolved) for literal, resolved in found]
    return refs


def test_the_scan_finds_the_references_it_must_check():
    refs = _references()
    files = {f for f, _, _ in refs}
    # the callers that once carried a stale path, and the docs' commands
    for needed in ("ssprl_d2/benchmark/gpu_check.py", "tools/launch_slurm.py", "README.md",
                   "ssprl_d2/transfer.py", "configs/ssprl_pretrain.yaml"):  # fmt: skip
        assert needed in files, needed
    assert len(refs) > 50


def test_a_stale_path_is_caught():
    text = 'os.path.join(_REPO, "configs", "mask_rcnn_R_50_FPN_15k_coco2014.yaml")'
    [(_, resolved)] = _code_references("x.py", text)
    assert not os.path.isfile(resolved)


@pytest.mark.parametrize(
    "where,literal,resolved",
    [pytest.param(*ref, id=f"{ref[0]}:{os.path.relpath(ref[2], REPO)}") for ref in _references()],
)
def test_every_named_config_exists(where, literal, resolved):
    assert os.path.isfile(resolved), f"{where} names {literal!r}, which does not exist"
