import os
import sys
import uuid

import pytest

# tests/util.py is imported as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def new_name():
    """Hand out unique dataset names and unregister them afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []

    def make() -> str:
        names.append(f"ssprl_test_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """24 synthetic training images for train_net runs, and the overrides that register them.

    See tests/train_net_harness.py; one dataset per test module, under a name of its own.
    """
    from train_net_harness import small_synthetic_dataset

    return small_synthetic_dataset(str(tmp_path_factory.mktemp("data")))
