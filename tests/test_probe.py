"""kNN multi-label probe: separable features score high, random ones near chance, weights load."""
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from util import CPU_CONFIG, REPO, tiny_cfg

from ssprl_d2 import add_ssprl_config
from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.build import build_multilabel_test_loader
from ssprl_d2.data.datasets import register_coco_format
from ssprl_d2.data.synthetic import generate_synthetic_dataset
from ssprl_d2.engine import WeightsMismatchError
from ssprl_d2.evaluation.bn_recalibration import recalibrated_bn
from ssprl_d2.evaluation.object_probe import knn_accuracy, object_boxes, object_crops, object_probe
from ssprl_d2.evaluation.probe import (
    KNNProbe,
    build_probe_model,
    chance_map,
    classifier_features,
    knn_map,
    knn_probe,
    knn_scores,
    probe_cfg,
)

PROBE = os.path.join(REPO, "tools", "probe.py")


def _multilabel(n, num_classes, gen, p=0.3):
    labels = (torch.rand(n, num_classes, generator=gen) < p).float()
    labels[labels.sum(1) == 0, 0] = 1.0
    return labels


def test_knn_scores_are_the_weighted_vote_of_the_nearest_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    test = torch.tensor([[2.0, 0.0]])  # not unit length: cosine only
    plain = knn_scores(train, labels, test, k=2, weighted=False)
    # neighbours: rows 0 and 2 -> class 0 voted twice, class 1 once
    assert torch.allclose(plain, torch.tensor([[1.0, 0.5]]))
    weighted = knn_scores(train, labels, test, k=2, weighted=True)
    w0, w2 = 1.0, (0.9 / (0.81 + 0.01) ** 0.5 + 1) / 2
    assert torch.allclose(weighted, torch.tensor([[1.0, w2 / (w0 + w2)]]), atol=1e-5)


def test_features_that_separate_the_classes_reach_high_map():
    gen = torch.Generator().manual_seed(0)
    num_classes, dim = 6, 32
    basis = torch.randn(num_classes, dim, generator=gen)
    train_y, test_y = _multilabel(300, num_classes, gen), _multilabel(100, num_classes, gen)
    # a feature is the sum of its classes' directions plus a little noise
    train_x = train_y @ basis + 0.1 * torch.randn(300, dim, generator=gen)
    test_x = test_y @ basis + 0.1 * torch.randn(100, dim, generator=gen)
    assert knn_map(train_x, train_y, test_x, test_y, k=10) > 90.0
    assert chance_map(test_y) < 50.0


def test_random_features_stay_near_chance():
    gen = torch.Generator().manual_seed(1)
    num_classes = 6
    train_y, test_y = _multilabel(300, num_classes, gen), _multilabel(200, num_classes, gen)
    train_x, test_x = torch.randn(300, 32, generator=gen), torch.randn(200, 32, generator=gen)
    chance = chance_map(test_y)
    assert abs(knn_map(train_x, train_y, test_x, test_y, k=20) - chance) < 8.0


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("probe_data") / "synth")
    generate_synthetic_dataset(root, num_train=6, num_val=3, seed=2)
    name = "test_probe_tiny_train"
    register_coco_format(name, f"{root}/annotations/instances_train.json", f"{root}/train")
    return name


def _probe_cfg(dataset):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(CPU_CONFIG)
    cfg.INPUT.MULTILABEL.CROP_SIZE = 32
    cfg.INPUT.MULTILABEL.RESIZE_SIZE = 36
    cfg.DATALOADER.NUM_WORKERS = 0
    return probe_cfg(cfg, dataset)


def test_features_of_a_checkpoint_and_of_its_exported_trunk_are_equal(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    pretrainer = build_model(tiny_cfg())
    with torch.no_grad():  # move BN statistics away from their initial values
        for name, buf in pretrainer.named_buffers():
            if "running_var" in name:
                buf.mul_(1.5)
    ckpt, pkl = str(tmp_path / "model_final.pth"), str(tmp_path / "trunk.pkl")
    torch.save({"model": pretrainer.state_dict(), "iteration": 3}, ckpt)
    convert_checkpoint(ckpt, pkl)

    cfg = _probe_cfg(tiny_dataset)
    loader = build_multilabel_test_loader(cfg, tiny_dataset)
    from_ckpt, labels = classifier_features(build_probe_model(cfg, ckpt), loader)
    from_pkl, labels2 = classifier_features(build_probe_model(cfg, pkl), loader)
    random_x, _ = classifier_features(build_probe_model(cfg, None, seed=0), loader)
    assert from_ckpt.shape == (6, 512) and labels.shape == (6, 8)
    assert torch.equal(labels, labels2)
    assert torch.allclose(from_ckpt, from_pkl, atol=1e-5)
    # the trained trunk really replaced the random initialisation
    assert not torch.allclose(from_ckpt, random_x, atol=1e-3)
    # the pre-trainer's own pooled features (eval mode) are what the probe sees
    images = torch.stack([x["image"] for batch in loader for x in batch])
    expected = pretrainer.eval().image_features(pretrainer.normalize(images.float() / 255.0))
    assert torch.allclose(from_ckpt, expected, atol=1e-4)

    result = knn_probe(cfg, pkl, tiny_dataset, tiny_dataset, k=3)
    # the exported trunk holds the seed-0 initial weights with other stored BN statistics; the
    # probe re-estimates them (RECOMPUTE_BN), so it must score it exactly as the seed-0 trunk
    assert result.recompute_bn and result.map == result.random_by_seed[0]
    # chance, by hand from the labels above: classes 0..6 are present in 2, 3, 2, 2, 1, 4 and 3
    # of the 6 images (class 7 in none), so the mean positive rate is 17 / (7 * 6)
    assert result.chance == pytest.approx(100.0 * 17 / 42)
    assert "kNN mAP (k=3)" in result.summary()


def test_weights_of_another_depth_are_refused(tiny_dataset, tmp_path):
    cfg = _probe_cfg(tiny_dataset)
    cfg.MODEL.RESNETS.DEPTH = 34
    torch.manual_seed(0)
    path = str(tmp_path / "r18.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    with pytest.raises(WeightsMismatchError):
        build_probe_model(cfg, path)


def test_tool_prints_the_three_maps(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    root = os.path.dirname(os.path.dirname(DatasetCatalog.get(tiny_dataset)[0]["file_name"]))
    register = ["DATASETS.PRETRAIN.REGISTER",
                f"['probe_tool_set', '{root}/annotations/instances_train.json', '{root}/train']"]
    proc = subprocess.run(
        [sys.executable, PROBE, "--config-file", CPU_CONFIG, "--weights", path, "--k", "3",
         "--train-dataset", "probe_tool_set", "--test-dataset", "probe_tool_set",
         "--objects", "--object-size", "24", "--linear", "--colour-histogram",
         "INPUT.MULTILABEL.CROP_SIZE", "32", "INPUT.MULTILABEL.RESIZE_SIZE", "36",
         "DATALOADER.NUM_WORKERS", "0", *register],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "kNN mAP (k=3):" in proc.stdout and "random trunk:" in proc.stdout
    assert "object-crop kNN top-1 (k=3" in proc.stdout
    assert "linear mAP (logistic, C=" in proc.stdout
    assert "colour histogram (8^3 bins, no network): kNN mAP (k=3)" in proc.stdout


def test_object_knn_accuracy_is_high_on_separable_features_and_near_chance_on_random_ones():
    gen = torch.Generator().manual_seed(0)
    centres = 5.0 * torch.randn(4, 16, generator=gen)
    train_y = torch.arange(200) % 4
    test_y = torch.arange(100) % 4
    train_x = centres[train_y] + torch.randn(200, 16, generator=gen)
    test_x = centres[test_y] + torch.randn(100, 16, generator=gen)
    assert knn_accuracy(train_x, train_y, test_x, test_y, 4, k=10) > 95.0
    noise = knn_accuracy(torch.randn(200, 16, generator=gen), train_y,
                         torch.randn(100, 16, generator=gen), test_y, 4, k=10)
    assert noise < 45.0  # chance is 25


def test_object_boxes_are_padded_clipped_and_skip_small_or_crowd_instances():
    d = {"file_name": "a.jpg", "height": 50, "width": 60, "annotations": [
        {"bbox": [2.0, 10.0, 20.0, 10.0], "category_id": 3},   # padded by 3 px, clipped at x=0
        {"bbox": [40.0, 40.0, 4.0, 4.0], "category_id": 1},    # 16 px: skipped
        {"bbox": [5.0, 5.0, 30.0, 30.0], "category_id": 2, "iscrowd": 1},
    ]}
    assert object_boxes([d], pad=0.15, min_area=64) == [("a.jpg", (0, 7, 25, 23), 3)]


def test_object_probe_crops_every_instance_of_the_tiny_dataset(tiny_dataset):
    cfg = _probe_cfg(tiny_dataset)
    crops, labels = object_crops(tiny_dataset, 24, cfg.INPUT.FORMAT)
    expected = object_boxes(DatasetCatalog.get(tiny_dataset))
    assert crops.shape == (len(expected), 3, 24, 24) and crops.dtype == torch.uint8
    assert labels.tolist() == [c for _, _, c in expected]
    result = object_probe(cfg, None, tiny_dataset, tiny_dataset, k=1, size=24)
    # each object is its own nearest neighbour
    assert result.accuracy == result.random_accuracy == 100.0
    assert result.num_test == len(expected) and "object-crop kNN top-1" in result.summary()


def test_recomputed_bn_makes_the_probe_independent_of_stored_statistics(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    pretrainer = build_model(tiny_cfg())
    paths = []
    for scale in (1.0, 4.0):  # the same weights with two sets of stored statistics
        with torch.no_grad():
            for name, buf in pretrainer.named_buffers():
                if "running_mean" in name:
                    buf.fill_(scale - 1.0)
                if "running_var" in name:
                    buf.fill_(scale)
        paths.append(str(tmp_path / f"stats_{scale}.pth"))
        torch.save({"model": pretrainer.state_dict()}, paths[-1])
    cfg = _probe_cfg(tiny_dataset)
    loader = build_multilabel_test_loader(cfg, tiny_dataset)

    def features(path, recompute):
        model = build_probe_model(cfg, path)
        if not recompute:
            return classifier_features(model, loader)[0]
        with recalibrated_bn(model.backbone,
                             lambda b: model.pooled_features(model.preprocess(b)), loader):
            return classifier_features(model, loader)[0]

    assert torch.allclose(features(paths[0], True), features(paths[1], True), atol=1e-4)
    assert not torch.allclose(features(paths[0], False), features(paths[1], False), atol=1e-3)
    probe = KNNProbe(cfg, tiny_dataset, tiny_dataset, k=3, recompute_bn=True)
    maps = [probe.map_of(build_probe_model(cfg, p)) for p in paths]
    assert abs(maps[0] - maps[1]) < 1e-6
    # the result carries the random trunks' spread and says how BN was treated
    result = knn_probe(cfg, paths[0], tiny_dataset, tiny_dataset, k=3, random_seeds=[0, 1])
    a, b = result.random_by_seed[0], result.random_by_seed[1]
    assert result.random_seeds == 2 and result.recompute_bn
    # mean and sample standard deviation of two values: (a + b) / 2 and |a - b| / sqrt(2)
    assert result.random_map == pytest.approx((a + b) / 2)
    assert result.random_std == pytest.approx(abs(a - b) / 2 ** 0.5)
    assert "(2 seeds)" in result.summary() and "recomputed" in result.summary()


def test_the_random_trunk_of_seed_s_is_where_pre_training_with_seed_s_starts(tiny_dataset):
    """So the probe's random trunk of the run's SEED is the run's own initialisation (paired)."""
    from detectron2.utils.env import seed_all_rng

    mls = get_cfg()
    add_ssprl_config(mls)
    mls.merge_from_file(os.path.join(REPO, "configs", "quick_schedules",
                                     "mls_R_18_cpu_synthetic.yaml"))
    for meta, cfg in (("SSPRL", tiny_cfg()), ("MLS", mls)):
        seed_all_rng(7)  # what the training command's setup does with SEED 7
        start = build_model(cfg).backbone.state_dict()
        random = build_probe_model(probe_cfg(cfg, tiny_dataset), None, 7).backbone.state_dict()
        for name, value in start.items():
            assert torch.equal(value, random[name]), (meta, name)


def test_the_linear_probe_separates_separable_features_and_not_random_ones():
    from ssprl_d2.evaluation.linear_probe import linear_probe_map

    gen = torch.Generator().manual_seed(3)
    num_classes, dim = 5, 24
    basis = torch.randn(num_classes, dim, generator=gen)
    train_y, test_y = _multilabel(200, num_classes, gen), _multilabel(100, num_classes, gen)
    noise = 0.5
    train_x = train_y @ basis + noise * torch.randn(200, dim, generator=gen)
    test_x = test_y @ basis + noise * torch.randn(100, dim, generator=gen)
    separable, c = linear_probe_map(train_x, train_y, test_x, test_y)
    assert separable > 90.0 and c in (0.01, 0.1, 1.0)
    random_map, _ = linear_probe_map(torch.randn(200, dim, generator=gen), train_y,
                                     torch.randn(100, dim, generator=gen), test_y)
    assert abs(random_map - chance_map(test_y)) < 12.0


def test_the_linear_probe_chooses_its_strength_without_the_test_labels():
    from ssprl_d2.evaluation.linear_probe import cross_validated_c, linear_probe_map

    gen = torch.Generator().manual_seed(4)
    train_y, test_y = _multilabel(60, 3, gen), _multilabel(30, 3, gen)
    # 40 noisy dimensions for 60 images: over-fitting, so the strength matters
    basis = torch.randn(3, 40, generator=gen)
    train_x = train_y @ basis * 0.3 + torch.randn(60, 40, generator=gen)
    test_x = test_y @ basis * 0.3 + torch.randn(30, 40, generator=gen)
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    _, c = linear_probe_map(train_x, train_y, test_x, test_y, grid)
    _, c_flipped = linear_probe_map(train_x, train_y, test_x, 1.0 - test_y, grid)
    assert c == c_flipped == cross_validated_c(train_x.double().numpy(), train_y.numpy(), grid)


def test_the_linear_probe_scores_a_class_with_one_training_label_as_a_constant():
    from ssprl_d2.evaluation.linear_probe import logistic_scores

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(20, 4, generator=gen).double().numpy()
    y = _multilabel(20, 2, gen).numpy()
    y[:, 1] = 0.0  # class 1 never present in training
    scores = logistic_scores(x, y, x[:5], 1.0)
    assert scores.shape == (5, 2) and (scores[:, 1] == 0.0).all()
    assert len(set(scores[:, 0].round(6))) > 1


def test_the_linear_probe_runs_on_an_exported_trunk_next_to_random_trunks(tiny_dataset, tmp_path):
    from ssprl_d2.evaluation.linear_probe import linear_probe

    torch.manual_seed(0)
    ckpt, pkl = str(tmp_path / "model_final.pth"), str(tmp_path / "trunk.pkl")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, ckpt)
    convert_checkpoint(ckpt, pkl)
    cfg = _probe_cfg(tiny_dataset)
    result = linear_probe(cfg, pkl, tiny_dataset, tiny_dataset, random_seeds=[0, 1], grid=(1.0,))
    # the exported trunk is the seed-0 initial trunk (same weights, BN re-estimated on the same
    # images): the same figure as the random trunk of seed 0
    assert result.map == result.random_by_seed[0]
    assert result.random_seeds == 2 and result.c == 1.0
    assert sorted(result.random_by_seed) == [0, 1] and result.recompute_bn
    assert "linear mAP (logistic, C=1)" in result.summary() and "(2 seeds)" in result.summary()


def test_colour_histograms_count_pixels_per_colour_cell():
    from ssprl_d2.evaluation.colour_reference import colour_histogram

    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[0, 0, :, 2:] = 255  # right half pure red, left half black
    h = colour_histogram(image, bins=2)
    # cells (r, g, b) -> index (r * 2 + g) * 2 + b: black 0, red 4; half the pixels each
    expected = torch.zeros(1, 8)
    expected[0, 0] = expected[0, 4] = 0.5 ** 0.5
    torch.testing.assert_close(h, expected)
    assert torch.allclose(colour_histogram(torch.randint(0, 256, (3, 3, 8, 8)), 8).norm(dim=1),
                          torch.ones(3))
    with pytest.raises(ValueError, match="expected"):
        colour_histogram(torch.zeros(3, 4, 4))


def test_the_colour_reference_keeps_each_image_with_its_labels(tiny_dataset):
    from ssprl_d2.evaluation.colour_reference import colour_reference

    cfg = _probe_cfg(tiny_dataset)
    result = colour_reference(cfg, tiny_dataset, tiny_dataset, k=1, bins=4)
    # scored on its own training images with k = 1, every image's neighbour is itself, so the
    # scores are its own labels: mAP 100 unless features and labels were misaligned
    assert result.knn_map == pytest.approx(100.0)
    # the linear probe is scored on its training images too: 6 images in 64 histogram cells are
    # linearly separable for any labelling, so every class ranks its positives first
    assert result.linear_map == pytest.approx(100.0) and result.bins == 4
