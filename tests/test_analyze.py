"""The analysis report (tools/analyze.py): builds from a tiny checkpoint, no broken references."""
import json
import os
import subprocess
import sys
import uuid
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image
from util import REPO, tiny_cfg

from ssprl_d2.analysis import AnalysisOptions, cosine_neighbors, knn_multilabel_map, write_report
from ssprl_d2.analysis.curves import collapse_spans, curve_groups, load_metrics, scale_collapse
from ssprl_d2.analysis.features import cut_grid
from ssprl_d2.analysis.figures import curves_figure, save_figure
from ssprl_d2.analysis.prototypes import (
    cooccurrence,
    effective_prototype_share,
    top_members,
    top_pairs,
)
from ssprl_d2.data.datasets import register_coco_format
from ssprl_d2.data.synthetic import generate_synthetic_dataset
from ssprl_d2.modeling.loss import effective_prototypes, effective_prototypes_of_counts

ANALYZE = os.path.join(REPO, "tools", "analyze.py")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.anchors = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            ref = attrs.get(key)
            if ref and ref.startswith("#"):
                self.anchors.append(ref[1:])
            elif ref:
                self.refs.append(ref)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny SS-PRL checkpoint, a metrics.json beside it and a tiny labelled dataset."""
    tmp = tmp_path_factory.mktemp("analyze")
    root = str(tmp / "synth")
    generate_synthetic_dataset(root, num_train=8, num_val=6, seed=3)
    tag = uuid.uuid4().hex[:6]
    names = {split: f"analyze_{split}_{tag}" for split in ("train", "val")}
    for split, name in names.items():
        register_coco_format(name, f"{root}/annotations/instances_{split}.json", f"{root}/{split}")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    run_dir = tmp / "run"
    run_dir.mkdir()
    DetectionCheckpointer(model, save_dir=str(run_dir)).save("model_final", iteration=9)
    with open(run_dir / "metrics.json", "w") as f:
        for it in range(0, 10):
            f.write(json.dumps({"iteration": it, "loss_pyr_s0": 5.0 - 0.1 * it,
                                "ssprl/pred_entropy_s0": 0.99 if it < 4 else 0.8,
                                "lr": 0.1}) + "\n")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(run_dir / "model_final.pth")
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"],)
    yield cfg, tmp
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _check_report(path):
    folder = os.path.dirname(path)
    parser = _Refs()
    with open(path) as f:
        parser.feed(f.read())
    parser.close()
    assert parser.refs, "the report references no figure"
    for ref in parser.refs:
        assert not ref.startswith(("/", "http:", "https:")), ref
        with Image.open(os.path.join(folder, ref)) as im:
            im.verify()
    assert set(parser.anchors) <= parser.ids
    return parser.refs


def test_report_builds_from_tiny_checkpoint(tiny_run):
    cfg, tmp = tiny_run
    out = str(tmp / "report")
    opts = AnalysisOptions(prototypes_per_scale=2, patches_per_prototype=3, queries=2,
                           neighbors=2, knn_k=3, tsne_points=20, progress=False)
    path = write_report(cfg, out, opts)
    refs = _check_report(path)
    for fig in ("curves.png", "tsne_prototypes.png", "prototype_patches_s2.png",
                "cross_scale_heatmaps.png", "cross_scale_pairs.png", "retrieval.png"):
        assert fig in refs
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["iteration"] == 9 and summary["images"] == 6
    assert summary["num_prototypes"] == [8, 6, 6]
    knn = summary["knn"]
    assert knn["bank_size"] == 8 and knn["test_size"] == 6 and knn["k"] == 3
    # chance by hand: classes 1..7 are in 4, 6, 1, 2, 2, 1 and 3 of the 6 evaluated images (class
    # 8 in none), so the mean positive rate is 19 / (7 * 6)
    assert knn["chance_mAP"] == pytest.approx(100.0 * 19 / 42)
    # the report's kNN mAP is the vote of the 8 training images for the 6 evaluated ones on the
    # checkpoint's pooled features: the same vote on features extracted here gives the same figure
    assert knn["mAP"] == pytest.approx(_knn_map_of_checkpoint(cfg, k=3), abs=1e-9)
    assert summary["collapse_spans"]["ssprl/pred_entropy_s0"] == [[0, 3]]


def _knn_map_of_checkpoint(cfg, k):
    """kNN mAP of DATASETS.TEST[0] voted by DATASETS.TRAIN[0], on MODEL.WEIGHTS' pooled features."""
    from ssprl_d2.analysis.features import extract_features
    from ssprl_d2.analysis.runner import load_pretrained
    from ssprl_d2.data.dataset_mapper import multilabel_targets

    model, _ = load_pretrained(cfg)
    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    feats, labels = [], []
    for name in (cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]):
        dicts = DatasetCatalog.get(name)
        f = extract_features(model, dicts, cfg.INPUT.PRETRAIN.SIZE_CROPS[0], with_embeddings=False,
                             desc=None)
        feats.append(f.features)
        labels.append(np.stack([multilabel_targets(dicts[i], len(classes))
                                for i in f.dataset_index]))
    return knn_multilabel_map(feats[0], labels[0], feats[1], labels[1], classes, k)["mAP"]


def test_tool_refuses_missing_weights(tiny_run, tmp_path):
    cfg, _ = tiny_run
    proc = subprocess.run(
        [sys.executable, ANALYZE, "--config-file", os.path.join(REPO, "configs",
         "quick_schedules", "ssprl_R_18_cpu_synthetic.yaml"), "--output", str(tmp_path),
         "MODEL.WEIGHTS", str(tmp_path / "nope.pth")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert "does not exist" in proc.stdout
    assert not os.path.exists(tmp_path / "report.html")


def test_retrieval_of_an_image_returns_it_first():
    feats = np.random.default_rng(0).normal(size=(12, 5))
    idx, sims = cosine_neighbors(feats, feats, 3)
    assert (idx[:, 0] == np.arange(12)).all()
    assert np.allclose(sims[:, 0], 1.0) and (np.diff(sims, axis=1) <= 1e-12).all()


def test_knn_map_follows_the_nearest_labels():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    test = np.array([[1.0, 0.05], [0.05, 1.0], [0.95, 0.0], [0.0, 0.9]])
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    res = knn_multilabel_map(train, labels, test, truth, ["a", "b"], k=2)
    assert res["mAP"] == pytest.approx(100.0) and res["chance_mAP"] == pytest.approx(50.0)
    # the labels swapped: every neighbour votes for the wrong class
    assert knn_multilabel_map(train, labels, test, truth[:, ::-1], ["a", "b"], k=2)["mAP"] < 60


def test_curves_read_metrics_with_missing_keys(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        json.dumps({"iteration": 19, "loss_pyr_s0": 5.5, "lr": 0.1}),
        "{not json",
        json.dumps({"iteration": 39, "ssprl/pred_entropy_s1": 0.99, "data_time": 0.1}),
        json.dumps({"eval": 1}),
        json.dumps({"iteration": 39, "loss_cross_s1": 1.0, "ssprl/pred_entropy_s1": 0.5}),
    ]
    path.write_text("\n".join(lines) + "\n")
    records = load_metrics(str(path))
    assert [r["iteration"] for r in records] == [19, 39]  # resumed duplicate: later one wins
    groups = curve_groups(records)
    assert groups["usage"] == [] and groups["lr"] == ["lr"]
    fig = curves_figure(records, 0.97)
    with Image.open(save_figure(fig, str(tmp_path / "c.png"))) as im:
        im.verify()
    assert curves_figure(load_metrics(str(tmp_path / "absent.json")), 0.97) is None
    assert curves_figure([{"iteration": 1, "time": 0.3}], 0.97) is None


def test_collapse_spans_mark_entropy_at_one():
    its = np.array([0, 20, 40, 60, 80])
    assert collapse_spans(its, np.array([0.99, 0.98, 0.7, 0.99, 0.99])) == [(0, 20), (60, 80)]
    assert collapse_spans(its, np.full(5, 0.5)) == []
    # the effective share collapses downwards
    assert collapse_spans(its, np.array([0.9, 0.2, 0.25, 0.6, 0.1]), 0.25, below=True) == [
        (20, 40), (80, 80)]


def test_effective_prototypes_of_hand_made_histograms():
    def share(counts):
        return float(effective_prototypes_of_counts(torch.tensor(counts, dtype=torch.float64)))

    assert share([5, 5, 5, 5]) == pytest.approx(1.0)  # uniform: all K in use
    assert share([4, 0, 0, 0]) == pytest.approx(0.25)  # all on one: 1 / K
    assert share([2, 2, 0, 0]) == pytest.approx(0.5)  # H = ln 2: two equal prototypes of 4
    # [3, 1]: exp(H) = 0.75^-0.75 * 0.25^-0.25 = 1.7548, of K = 2
    assert share([3, 1]) == pytest.approx(0.877383, abs=1e-6)
    # the arg-max of each row is counted: rows pick 0, 0, 1, 1 of K = 4
    scores = torch.tensor([[5.0, 1, 0, 0], [2, 1, 0, 0], [0, 3, 1, 0], [0, 9, 0, 8]])
    value = effective_prototypes(scores)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(0.5)
    assert effective_prototype_share(np.array([0, 0, 1, 1]), 4) == pytest.approx(0.5)
    # the demo checkpoint's 2x2 usage: 88 % of the rows on one prototype of 16, 12 rows on 12
    # others: H = -(0.88 ln 0.88 + 12 x 0.01 ln 0.01) = 0.665114, exp(H) / 16 = 0.121544
    concentrated = np.array([0] * 88 + list(range(1, 13)))
    assert effective_prototype_share(concentrated, 16) == pytest.approx(0.121544, abs=1e-6)


def _usage_case():
    """K = 16 at three scales. s0: 96 rows spread evenly; s1: 88 of 100 rows on prototype 0,
    as the demo checkpoint's 2x2 panel; s2: spread evenly, but its logged entropy ends at ln K."""
    spread = np.arange(96) % 16
    concentrated = np.array([0] * 88 + list(range(1, 13)))
    records = [
        {"iteration": it,
         "ssprl/pred_entropy_s0": 0.6, "ssprl/pred_entropy_s1": 0.5,
         "ssprl/pred_entropy_s2": 0.8 if it < 20 else 0.99,
         "ssprl/effective_prototypes_s0": 0.9,
         # s1's logged share stays above the mark: the report's assignments alone flag it
         "ssprl/effective_prototypes_s1": 0.4,
         "ssprl/effective_prototypes_s2": 0.2 if it == 10 else 0.8}
        for it in range(0, 40, 10)
    ]
    return {0: spread, 1: concentrated, 2: spread}, records


def test_collapse_summary_flags_concentrated_assignments_and_entropy_at_ln_k():
    assignments, records = _usage_case()
    assigned = {s: effective_prototype_share(a, 16) for s, a in assignments.items()}
    assert assigned[0] == pytest.approx(1.0) and assigned[2] == pytest.approx(1.0)
    verdict = scale_collapse(records, assigned)
    assert [s for s, v in verdict.items() if v["collapsed"]] == [1, 2]
    assert verdict[0]["collapsed_by"] == []
    assert verdict[1]["collapsed_by"] == ["effective_assigned"]
    assert verdict[1]["effective_assigned"] == pytest.approx(0.121544, abs=1e-6)
    assert verdict[2]["collapsed_by"] == ["entropy"]
    assert verdict[2]["entropy_spans"] == [(20, 30)]
    # the logged share dipped once and recovered: history, not a verdict
    assert verdict[2]["effective_spans"] == [(10, 10)]
    # the logged signal alone flags a scale too
    records[-1]["ssprl/effective_prototypes_s0"] = 0.1
    assert scale_collapse(records, assigned)[0]["collapsed_by"] == ["effective_logged"]
    # no metrics.json: the assignments still decide
    assert [s for s, v in scale_collapse([], assigned).items() if v["collapsed"]] == [1]


def test_report_collapse_summary_agrees_with_its_usage_panel(tmp_path):
    from types import SimpleNamespace

    from ssprl_d2.analysis.runner import _Report

    assignments, records = _usage_case()
    metrics = tmp_path / "metrics.json"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    scales = [SimpleNamespace(scale=s, probs=np.eye(16)[a], assignments=a)
              for s, a in assignments.items()]
    rep = _Report(None, None, str(tmp_path), AnalysisOptions(metrics=str(metrics)))
    rep.feats = SimpleNamespace(scales=scales)
    rep.scale_names = ["s0 (image)", "s1 (2x2)", "s2 (3x3)"]
    usage, curves = rep.usage(), rep.curves()
    assert rep.summary["effective_prototypes"]["s1 (2x2)"] == pytest.approx(0.121544, abs=1e-6)
    assert rep.summary["collapsed_scales"] == ["s1 (2x2)", "s2 (3x3)"]
    assert rep.summary["collapse"]["s1 (2x2)"]["collapsed_by"] == ["effective_assigned"]
    assert rep.summary["collapse_spans"]["ssprl/pred_entropy_s2"] == [(20, 30)]
    text = " ".join(curves.text)
    assert "Collapsed scales: s1 (2x2), s2 (3x3)" in text
    assert "s1 (2x2) 0.122" in " ".join(usage.text)


def test_prototype_helpers():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    assert top_members(probs, 0, 2).tolist() == [0, 3]
    w = np.array([[0.1, 0.5], [0.9, 0.0]])
    assert top_pairs(w, 2) == [(1, 0, 0.9), (0, 1, 0.5)]
    assert top_pairs(w, 5, rows=np.array([True, False])) == [(0, 1, 0.5), (0, 0, 0.1)]
    co = cooccurrence(np.array([1, 0]), np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2, 2)
    assert co.tolist() == [[0, 2], [1, 1]]
    cells = cut_grid(np.zeros((30, 40, 3), np.uint8), 3, 8)
    assert len(cells) == 9 and cells[0].shape == (8, 8, 3)


def test_mls_report_shows_pseudo_positives_instead_of_prototypes(tiny_run):
    from util import mls_tiny_cfg

    cfg, tmp = tiny_run
    mls_cfg = mls_tiny_cfg()
    torch.manual_seed(0)
    model = build_model(mls_cfg)
    run_dir = tmp / "mls_run"
    run_dir.mkdir()
    DetectionCheckpointer(model, save_dir=str(run_dir)).save("model_final", iteration=3)
    mls_cfg.MODEL.WEIGHTS = str(run_dir / "model_final.pth")
    mls_cfg.DATASETS.TRAIN, mls_cfg.DATASETS.TEST = cfg.DATASETS.TRAIN, cfg.DATASETS.TEST
    out = str(tmp / "mls_report")
    opts = AnalysisOptions(queries=2, neighbors=2, knn_k=3, progress=False)
    refs = _check_report(write_report(mls_cfg, out, opts))
    assert "pseudo_positives.png" in refs and "tsne_prototypes.png" not in refs
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    # class 2 is in every one of the 6 analysed images (test_report_builds_from_tiny_checkpoint
    # counts them): every pseudo-positive shares a label with its query
    assert summary["pseudo_positive_precision"] == 100.0
