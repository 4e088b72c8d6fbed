"""MLS: pseudo-labels, objectives, momentum update, aligned dictionaries, gather, the model."""
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from util import mls_batch, mls_tiny_cfg

from ssprl_d2.modeling.distributed import (
    concat_all_gather,
    local_permutation,
    shuffle_across_processes,
    split_batch,
    unshuffle_across_processes,
)
from ssprl_d2.modeling.mls import multi_hot
from ssprl_d2.modeling.mls_loss import (
    info_nce,
    multilabel_bce,
    pseudo_label_precision,
    pseudo_label_usage,
    topk_pseudo_labels,
)
from ssprl_d2.modeling.momentum import ema_update_, momentum_copy
from ssprl_d2.modeling.pretrainer import pooled_trunk_features
from ssprl_d2.modeling.queue import AlignedDictionary


# ------------------------------------------------------------------ objectives
def test_pseudo_labels_equal_a_hand_computed_top_k():
    g = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    # angles 0, 30, 60, 90, 120 degrees from the x axis
    angles = torch.tensor([0.0, 30.0, 60.0, 90.0, 120.0]) * math.pi / 180
    dictionary = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = topk_pseudo_labels(g, dictionary, k=2)
    # x axis: entries at 0 and 30 degrees; y axis: 90, then 60 and 120 tie (cos 30) -> one of them
    assert labels[0].tolist() == [1, 1, 0, 0, 0]
    assert labels[1, 3] == 1 and labels[1].sum() == 2 and labels[1, :2].sum() == 0
    # k beyond the filled rows: every row is a pseudo-positive
    assert topk_pseudo_labels(g, dictionary[:2], k=20).tolist() == [[1, 1], [1, 1]]


def test_info_nce_equals_the_value_worked_out_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    tau = 0.2
    # logits: positive 0.6 / 0.2 = 3, negatives 0 and -5
    expected = -math.log(math.exp(3) / (math.exp(3) + math.exp(0) + math.exp(-5)))
    assert info_nce(q, k, negatives, tau).item() == pytest.approx(expected, rel=1e-6)
    # no negatives yet (empty dictionary): only the positive, loss 0
    assert info_nce(q, k, negatives[:0], tau).item() == pytest.approx(0.0, abs=1e-7)


def test_multilabel_bce_equals_the_value_worked_out_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    dictionary = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    tau = 0.5
    # logits 2, 0, -2 against labels 1, 0, 0, averaged over the D = 3 entries
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sig(2)) + math.log(1 - sig(0)) + math.log(1 - sig(-2))) / 3
    assert multilabel_bce(z, dictionary, labels, tau).item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_precision_and_usage():
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    query = multi_hot([[0], [1, 2], []], 3)
    entries = multi_hot([[0], [1], [2], [0, 2]], 3)
    precision, chance = pseudo_label_precision(labels, query, entries)
    # query 0: entry 0 shares class 0, entry 1 does not -> 1/2; query 1: both share -> 1;
    # query 2 has no class and is left out
    assert precision == pytest.approx(0.75)
    assert chance == pytest.approx((2 / 4 + 3 / 4) / 2)
    # 3 distinct entries... of 6 pseudo-positives: rows 0 and 2 picked the same two
    assert pseudo_label_usage(labels) == pytest.approx(4 / 6)
    # undefined (no query with a class, or none with a pseudo-positive): NaN, the model logs none
    for undefined in (pseudo_label_precision(labels, multi_hot([[], [], []], 3), entries),
                      pseudo_label_precision(torch.zeros_like(labels), query, entries)):
        assert all(math.isnan(v) for v in undefined)
    assert pseudo_label_usage(torch.zeros_like(labels)) == 0.0
    with pytest.raises(ValueError, match="PRECISION_CLASSES"):
        multi_hot([[3]], 3)


# ------------------------------------------------------------------ momentum and dictionaries
def test_momentum_update_moves_the_copy_towards_the_source():
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = momentum_copy(source)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    ema_update_(target, source, 0.9)
    for t, b, s in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    ema_update_(target, source, 0.0)
    for t, s in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(t, s)
    with pytest.raises(ValueError):
        ema_update_(target, source, 1.5)


def test_dictionaries_stay_in_the_same_order_after_pushes_that_wrap_around():
    d = AlignedDictionary(5, {"g": (2, torch.float32), "z": (3, torch.float32)})
    assert d.fill == 0 and d.valid("g").shape == (0, 2)
    ids = torch.arange(13, dtype=torch.float32)
    for start, n in ((0, 3), (3, 3), (6, 4), (10, 3)):  # 3 wraps; the last push wraps again
        chunk = ids[start : start + n, None]
        d.push(g=chunk.repeat(1, 2), z=-chunk.repeat(1, 3))
        # row i of Q_g and of Q_z came from the same key
        torch.testing.assert_close(d.g[:, :1], -d.z[:, :1])
    assert d.fill == 1.0
    # the last 5 keys (8..12), in ring order from the write position
    assert sorted(d.g[:, 0].tolist()) == [8, 9, 10, 11, 12]
    assert d.g[int(d.ptr), 0] == 8  # the oldest row is overwritten next
    # a push longer than the dictionary keeps its newest rows
    d.push(g=torch.arange(7.0)[:, None].repeat(1, 2), z=torch.zeros(7, 3))
    assert sorted(d.g[:, 0].tolist()) == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="fields"):
        d.push(g=torch.zeros(1, 2))


def _gather_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from detectron2.utils import comm

        assert comm.get_world_size() == 2
        x = torch.arange(6, dtype=torch.float32).view(3, 2) + 100 * rank
        gathered = concat_all_gather(x)
        shuffled, inverse = shuffle_across_processes(x, seed=7)
        restored = unshuffle_across_processes(shuffled * 2, inverse)
        # the dictionary of every rank receives the same rows in rank order
        d = AlignedDictionary(4, {"g": (2, torch.float32)})
        d.push(g=gathered)
        torch.save({"gathered": gathered, "shuffled": shuffled, "restored": restored,
                    "dictionary": d.g.clone()}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_keys_gathered_across_two_gloo_processes():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gather_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        out = [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
    x = [torch.arange(6, dtype=torch.float32).view(3, 2) + 100 * r for r in range(2)]
    for r in range(2):
        torch.testing.assert_close(out[r]["gathered"], torch.cat(x))
        torch.testing.assert_close(out[r]["restored"], 2 * x[r])
    torch.testing.assert_close(out[0]["dictionary"], out[1]["dictionary"])
    # shuffle-BN: the two shares partition the global batch
    rows = torch.cat([out[0]["shuffled"], out[1]["shuffled"]])
    assert sorted(rows[:, 0].tolist()) == sorted(torch.cat(x)[:, 0].tolist())


# ------------------------------------------------------------------ the meta-architecture
def test_mls_builds_trains_a_step_and_fills_its_dictionaries():
    torch.manual_seed(0)
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.PRECISION_CLASSES": 3}))
    model.train()
    assert model.task == "pretrain"
    assert model.prototype_modules() == [] and model.queue_modules() == []
    assert model.rank_state_dict() == {}
    key_before = model.key_backbone.stem.conv1.weight.clone()
    losses = model(mls_batch(4, seed=0))
    assert set(losses) == {"loss_infonce", "loss_ml"}
    # empty dictionaries at the first step: nothing to contrast with or to label
    assert losses["loss_infonce"].item() == pytest.approx(0.0, abs=1e-6)
    assert int(model.dictionary.count) == 4
    storage = EventStorage()
    with storage:
        losses = model(mls_batch(4, seed=1))
    assert losses["loss_infonce"].item() > 0 and losses["loss_ml"].item() > 0
    logged = set(storage.histories())
    for name in ("mls/dictionary_fill", "mls/pseudo_label_precision", "mls/pseudo_label_usage",
                 "mls/positive_similarity", "mls/dictionary_similarity"):
        assert name in logged, name
    sum(losses.values()).backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    assert model.head.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in model.key_backbone.parameters())
    # the key encoder moved towards the query encoder (after an optimiser step they differ)
    with torch.no_grad():
        model.backbone.stem.conv1.weight.add_(1.0)
    model(mls_batch(4, seed=2))
    delta = model.key_backbone.stem.conv1.weight - key_before
    torch.testing.assert_close(delta, torch.full_like(delta, 0.01), atol=1e-5, rtol=0)
    # the dictionaries, the key encoder and the labels are checkpointed with the model
    state = model.state_dict()
    for key in ("dictionary.g", "dictionary.z", "dictionary.classes", "dictionary.ptr",
                "key_backbone.stem.conv1.weight", "key_head.mlp.0.weight"):
        assert key in state, key
    assert state["dictionary.classes"][:4].argmax(1).tolist() == [0, 1, 2, 0]


def test_precision_is_logged_only_for_batches_with_labelled_images():
    torch.manual_seed(0)
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.PRECISION_CLASSES": 3}))
    model.train()
    model(mls_batch(4, seed=0))
    unlabelled = mls_batch(4, seed=1)
    for x in unlabelled:
        x["category_ids"] = []
    with EventStorage() as storage:
        model(unlabelled)
    logged = set(storage.histories())
    assert "mls/pseudo_label_usage" in logged and "mls/pseudo_label_precision" not in logged


def test_dictionary_write_position_and_fill_come_back_with_a_state_dict():
    d = AlignedDictionary(4, {"g": (1, torch.float32)})
    d.push(g=torch.arange(6.0)[:, None])  # wraps: rows 4, 5, 2, 3; next write at row 2
    resumed = AlignedDictionary(4, {"g": (1, torch.float32)})
    resumed.load_state_dict(d.state_dict())
    assert resumed.fill == 1.0 and resumed.valid("g").shape == (4, 1)
    resumed.push(g=torch.tensor([[6.0]]))
    d.push(g=torch.tensor([[6.0]]))
    torch.testing.assert_close(resumed.g, d.g)
    assert resumed.g[:, 0].tolist() == [4.0, 5.0, 6.0, 3.0]
    assert int(resumed.ptr) == 3


def test_symmetric_loss_pushes_both_views_and_inference_gives_pooled_features():
    torch.manual_seed(0)
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.SYMMETRIC": True}))
    model.train()
    model(mls_batch(4))
    assert int(model.dictionary.count) == 8
    model.eval()
    out = model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}] * 2)
    assert out[0]["features"].shape == (512,)


def test_split_bn_normalises_each_part_alone_and_keys_come_back_in_order():
    torch.manual_seed(0)
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.BN_SPLITS": 2, "MODEL.MLS.KEY_BN": "shuffle"}))
    model.train()
    images = torch.randn(4, 3, 32, 32)
    # queries: batch norm over each half only, so changing the second half leaves the first
    g, _ = model._query(images)
    changed = images.clone()
    changed[2:] = torch.randn(2, 3, 32, 32)
    g2, _ = model._query(changed)
    torch.testing.assert_close(g2[:2], g[:2])
    assert not torch.allclose(g2[2:], g[2:])
    whole = model.bn_splits
    model.bn_splits = 1
    assert not torch.allclose(model._query(images)[0][:2], g[:2])  # the whole batch differs
    model.bn_splits = whole
    # keys: permuted before the split, returned in the input's order
    perm = local_permutation(4, 7, images.device)
    with torch.no_grad():
        expected = torch.cat([
            pooled_trunk_features(model.key_backbone, model.in_feature, part)
            for part in split_batch(images[perm], 2)
        ])
    keys_g, keys_z = model._keys(images, seed=7)
    torch.testing.assert_close(keys_g[perm], F.normalize(expected, dim=1))
    assert keys_z.shape == (4, 16)


def test_bn_splits_must_divide_the_batch():
    with pytest.raises(ValueError, match="BN_SPLITS"):
        build_model(mls_tiny_cfg(**{"MODEL.MLS.BN_SPLITS": 0}))
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.BN_SPLITS": 3}))
    model.train()
    with pytest.raises(ValueError, match="cannot be split into 3"):
        model(mls_batch(4))


def test_mls_refuses_a_pyramid_layout():
    with pytest.raises(ValueError, match="two crops"):
        build_model(mls_tiny_cfg(**{"INPUT.PRETRAIN.NMB_CROPS": [2, 2],
                                    "INPUT.PRETRAIN.SIZE_CROPS": [32, 16],
                                    "INPUT.PRETRAIN.MIN_SCALE_CROPS": [0.2, 0.05],
                                    "INPUT.PRETRAIN.MAX_SCALE_CROPS": [1.0, 0.2]}))
