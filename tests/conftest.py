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
