import os

import pytest
import torch
from torch import nn

from ssprl_d2.atomic import atomic_write_bytes
from ssprl_d2.engine import AtomicDetectionCheckpointer


def test_crash_while_saving_keeps_the_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000009")
    good = (tmp_path / "model_0000009.pth").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0000019")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "model_0000009.pth").read_bytes() == good
    monkeypatch.undo()
    # and the survivor loads, with the weights it was saved with
    fresh = nn.Linear(3, 2)
    with torch.no_grad():
        fresh.weight.zero_()
    loader = AtomicDetectionCheckpointer(fresh, save_dir=str(tmp_path))
    loader.resume_or_load("", resume=True)
    torch.testing.assert_close(fresh.weight, model.weight)
    torch.testing.assert_close(fresh.bias, model.bias)


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = str(tmp_path / "a.json")
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert open(path, "rb").read() == b"two"
    assert os.listdir(tmp_path) == ["a.json"]
