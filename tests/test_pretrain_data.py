import logging

import numpy as np
import pytest
import torch
from PIL import Image
from util import tiny_cfg

from ssprl_d2.data.build import PretrainDataset
from ssprl_d2.data.dataset_mapper import PyramidDatasetMapper


def _write_images(tmp_path):
    files = []
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "L", "RGBA", "CMYK", "P", "I;16"]):
        path = tmp_path / f"img{i}.png" if mode != "CMYK" else tmp_path / f"img{i}.jpg"
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16))
        else:
            img = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert(mode)
        img.save(path)
        files.append(str(path))
    return files


def test_every_image_mode_and_small_images_give_the_full_pyramid(tmp_path):
    cfg = tiny_cfg()
    mapper = PyramidDatasetMapper(cfg)
    files = _write_images(tmp_path)  # 30x40 images, smaller than the 40/54-px patch images
    dataset = PretrainDataset([{"file_name": f, "image_id": i} for i, f in enumerate(files)],
                              mapper, seed=0)
    for i in range(len(files)):
        sample = dataset[(i, i)]
        assert sample["skipped"] == 0
        assert [tuple(c.shape) for c in sample["crops"]] == [
            (3, s.size, s.size) for s in mapper.views.layout
        ]
        assert all(c.dtype == torch.uint8 for c in sample["crops"])


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    good = _write_images(tmp_path)[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(open(good, "rb").read()[:100])  # truncated file
    dicts = [{"file_name": str(bad), "image_id": 0}, {"file_name": good, "image_id": 1}]
    dataset = PretrainDataset(dicts, PyramidDatasetMapper(tiny_cfg()), seed=0)
    with caplog.at_level(logging.WARNING):
        sample = dataset[(0, 0)]
    assert sample["skipped"] == 1 and sample["image_id"] == 1
    assert "broken.jpg" in caplog.text
    # deterministic replacement: the same key gives the same crops
    again = dataset[(0, 0)]
    assert all(torch.equal(a, b) for a, b in zip(sample["crops"], again["crops"]))


def test_a_folder_of_unreadable_files_stops_with_a_clear_error(tmp_path):
    dicts = []
    for i in range(3):
        p = tmp_path / f"x{i}.jpg"
        p.write_text("not an image")
        dicts.append({"file_name": str(p), "image_id": i})
    dataset = PretrainDataset(dicts, PyramidDatasetMapper(tiny_cfg()), seed=0)
    with pytest.raises(RuntimeError, match="unreadable images in a row"):
        dataset[(0, 0)]


def test_same_position_gives_same_sample_other_position_differs(tmp_path):
    files = _write_images(tmp_path)
    dataset = PretrainDataset([{"file_name": files[0], "image_id": 0}],
                              PyramidDatasetMapper(tiny_cfg()), seed=5)
    a, b, c = dataset[(0, 3)], dataset[(0, 3)], dataset[(0, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a["crops"], b["crops"]))
    assert not all(torch.equal(x, y) for x, y in zip(a["crops"], c["crops"]))


def sample_file(tmp_path):
    return _write_images(tmp_path)[0]


@pytest.mark.parametrize("place", ["model", "worker"])
def test_mapper_marks_whether_it_applied_the_photometric_part(tmp_path, place):
    cfg = tiny_cfg()
    cfg.INPUT.PRETRAIN.PHOTOMETRIC_ON = place
    mapper = PyramidDatasetMapper(cfg)
    sample = mapper({"file_name": sample_file(tmp_path), "image_id": 0}, seed=1)
    assert sample["photometric_done"] == (place == "worker")
    assert all(c.dtype == torch.uint8 for c in sample["crops"])
    record = {"file_name": sample_file(tmp_path), "image_id": 0}
    geometric = PyramidDatasetMapper(tiny_cfg())(record, seed=1)
    same = [torch.equal(a, b) for a, b in zip(sample["crops"], geometric["crops"])]
    # the same geometric crops; the worker placement changed (nearly) every one of them
    assert all(same) if place == "model" else sum(same) < len(same) // 2


def test_unknown_photometric_place_is_an_error_naming_the_value():
    cfg = tiny_cfg()
    cfg.INPUT.PRETRAIN.PHOTOMETRIC_ON = "gpu"
    with pytest.raises(ValueError, match="PHOTOMETRIC_ON.*'gpu'"):
        PyramidDatasetMapper(cfg)
