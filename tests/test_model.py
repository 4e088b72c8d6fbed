import copy

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from util import random_batch, tiny_cfg

from ssprl_d2.engine import (
    FreezePrototypesHook,
    NormalizePrototypesHook,
    QueueStartHook,
    RankStateHook,
)
from ssprl_d2.modeling import SSPRL


def _model(**overrides):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**overrides))
    model.train()
    return model


def test_meta_architecture_is_registered_and_builds_from_config():
    model = _model()
    assert isinstance(model, SSPRL)
    assert len(model.layout) == 34
    assert [p.num_prototypes for p in model.prototypes] == [8, 6, 6]


def test_equal_size_crops_share_one_trunk_call_even_when_not_adjacent():
    # 32-px large crops, 16-px small crops, 24-px 2x2 patches, 16-px 3x3 patches: three sizes
    model = _model(**{"INPUT.PRETRAIN.PATCH_CROP_SIZES": [24, 16]})
    calls = []
    forward = model.backbone.forward
    model.backbone.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    model(random_batch(model.layout, 2))
    assert sorted(calls) == sorted([(2 * 2, 3, 32, 32), (2 * 8, 3, 24, 24), (2 * 24, 3, 16, 16)])


def test_losses_per_scale_and_term_are_finite():
    model = _model()
    losses = model(random_batch(model.layout, 4))
    assert set(losses) == {
        "loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2", "loss_cross_s1", "loss_cross_s2"
    }
    for v in losses.values():
        assert v.ndim == 0 and torch.isfinite(v)


def test_gradients_reach_trunk_heads_prototypes_and_cross_learners():
    model = _model()
    sum(model(random_batch(model.layout, 4)).values()).backward()
    groups = {
        "trunk": model.backbone.stem.conv1.weight,
        "head0": model.heads[0].mlp[0].weight,
        "head2": model.heads[2].mlp[3].weight,
        "proto0": model.prototypes[0].weight,
        "proto2": model.prototypes[2].weight,
        "g1": model.cross_learners[0].weight,
        "g2": model.cross_learners[1].weight,
    }
    for name, p in groups.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_alpha_beta_lambda_scale_their_terms():
    model = _model()
    batch = random_batch(model.layout, 4)
    base = {k: v.item() for k, v in model(batch).items()}
    model.pyr_weights = [2.0, 0.5, 0.0]
    model.cross_weights = [0.5, 1.0]
    model.cross_lambda = 3.0
    scaled = {k: v.item() for k, v in model(batch).items()}
    assert scaled["loss_pyr_s0"] == pytest.approx(2.0 * base["loss_pyr_s0"], rel=1e-4)
    assert scaled["loss_pyr_s1"] == pytest.approx(2.0 * base["loss_pyr_s1"], rel=1e-4)
    assert scaled["loss_pyr_s2"] == 0.0
    assert scaled["loss_cross_s1"] == pytest.approx(6.0 * base["loss_cross_s1"], rel=1e-4)
    assert scaled["loss_cross_s2"] == pytest.approx(12.0 * base["loss_cross_s2"], rel=1e-4)


def test_scale_zero_only_is_swav():
    model = _model(**{"INPUT.PRETRAIN.GRIDS": [], "MODEL.SSPRL.NUM_PROTOTYPES": [8],
                      "INPUT.PRETRAIN.PATCH_CROP_SIZES": [], "INPUT.PRETRAIN.PATCH_IMAGE_SIZES": [],
                      "MODEL.SSPRL.PYR_WEIGHTS": [1.0], "MODEL.SSPRL.CROSS_WEIGHTS": [],
                      "MODEL.SSPRL.QUEUE_LENGTHS": [64]})
    assert len(model.layout) == 8 and len(model.cross_learners) == 0
    assert set(model(random_batch(model.layout, 4))) == {"loss_pyr_s0"}


def test_shared_prototypes_are_one_parameter():
    model = _model(**{"MODEL.SSPRL.SHARED_PROTOTYPES": True})
    assert model.prototypes[0] is model.prototypes[1] is model.prototypes[2]
    n = sum(1 for name, _ in model.named_parameters() if name.startswith("prototypes"))
    assert n == 1
    sum(model(random_batch(model.layout, 4)).values()).backward()
    assert model.prototypes[0].weight.grad.abs().sum() > 0


def test_mismatched_weights_are_a_clear_error():
    with pytest.raises(ValueError, match="PYR_WEIGHTS"):
        _model(**{"MODEL.SSPRL.PYR_WEIGHTS": [1.0, 0.25]})


def test_release_mu_changes_only_the_cross_terms():
    model = _model()
    batch = random_batch(model.layout, 4)
    paper = {k: v.item() for k, v in model(batch).items()}
    model.cross_mu = "scores"
    release = {k: v.item() for k, v in model(batch).items()}
    assert paper["loss_pyr_s1"] == pytest.approx(release["loss_pyr_s1"], rel=1e-5)
    assert paper["loss_cross_s1"] != pytest.approx(release["loss_cross_s1"], rel=1e-3)


def test_crops_augmented_nowhere_are_refused():
    # PHOTOMETRIC_ON "worker" for the model, but the samples say the workers did not augment
    model = _model(**{"INPUT.PRETRAIN.PHOTOMETRIC_ON": "worker"})
    assert model.photometric is None
    with pytest.raises(ValueError, match="PHOTOMETRIC_ON must match"):
        model(random_batch(model.layout, 2))


def test_hooks_ask_the_model_for_prototypes_and_queues():
    model = _model(
        **{"MODEL.SSPRL.SHARED_PROTOTYPES": True, "MODEL.SSPRL.QUEUE_LENGTHS": [16, 0, 0]}
    )
    # shared C_0 counted once, then g_phi of both patch scales
    assert model.prototype_modules() == [model.prototypes[0], *model.cross_learners]
    assert model.queue_modules() == [model.queues[0]]


def test_golden_loss_value():
    # photometric augmentation off: the value depends only on the model and the seeded init
    model = _model()
    model.photometric = None
    batch = random_batch(model.layout, 4, seed=7)
    for x in batch:
        x["photometric_done"] = True
    losses = model(batch)
    total = sum(losses.values()).item()
    print(f"golden total loss: {total:.6f}", {k: round(v.item(), 6) for k, v in losses.items()})
    assert total == pytest.approx(GOLDEN_TOTAL, rel=1e-4), f"new value {total:.6f}"


# measured on this code (torch 2.14.1, CPU); a change prints the new value
GOLDEN_TOTAL = 18.835861


def test_queue_fills_then_joins_sinkhorn_and_lives_in_the_state_dict():
    model = _model(**{"MODEL.SSPRL.QUEUE_LENGTHS": [16, 64, 144]})
    queue = model.queues[0]
    assert queue.length == 16 and model.queues[1].length == 64
    assert "queues.0.embeddings" in model.state_dict()
    model(random_batch(model.layout, 8, seed=1))
    assert int(queue.count) == 0  # inactive before the start iteration
    for q in model.queues:
        q.active = True
    model(random_batch(model.layout, 8, seed=2))
    assert int(queue.count) == 8 and not queue.ready
    model(random_batch(model.layout, 8, seed=3))
    assert queue.ready
    batch = random_batch(model.layout, 8, seed=4)
    # with the queue ready, codes come from a joint Sinkhorn over queue + batch: losses change
    fresh = copy.deepcopy(model)
    for q in fresh.queues:
        q.active = False
    with torch.no_grad():
        with_queue = model(batch)["loss_pyr_s0"].item()
        without = fresh(batch)["loss_pyr_s0"].item()
    assert with_queue != pytest.approx(without, rel=1e-6)


class _ListLoader:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        while True:
            yield from self.batches


def test_frozen_prototypes_do_not_move_then_train():
    model = _model()
    batches = [random_batch(model.layout, 4, seed=s) for s in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    trainer = SimpleTrainer(model, _ListLoader(batches), opt)
    trainer.register_hooks([QueueStartHook(-1), NormalizePrototypesHook(), FreezePrototypesHook(2)])
    protos = [p.weight.detach().clone() for p in model.prototypes]
    g = model.cross_learners[0].weight.detach().clone()
    trunk = model.backbone.stem.conv1.weight.detach().clone()
    trainer.train(0, 2)
    for p, before in zip(model.prototypes, protos):
        torch.testing.assert_close(p.weight, before)
    torch.testing.assert_close(model.cross_learners[0].weight, g)
    assert not torch.equal(model.backbone.stem.conv1.weight, trunk)
    trainer.train(2, 3)
    assert not torch.equal(model.prototypes[0].weight, protos[0])


def test_prototypes_are_unit_norm_before_each_step():
    model = _model()
    with torch.no_grad():
        model.prototypes[1].weight.mul_(3.0)
    trainer = SimpleTrainer(model, _ListLoader([random_batch(model.layout, 2)]),
                            torch.optim.SGD(model.parameters(), lr=0.0))
    hook = NormalizePrototypesHook()
    hook.trainer = trainer
    hook.before_step()
    torch.testing.assert_close(model.prototypes[1].weight.norm(dim=1), torch.ones(6))


def test_checkpoint_without_per_rank_state_keeps_the_queue_on_rank_zero_only(monkeypatch):
    import ssprl_d2.engine.hooks as hooks_module

    model = _model(**{"MODEL.SSPRL.QUEUE_LENGTHS": [16, 64, 144]})
    for q in model.queues:
        q.active = True
    model(random_batch(model.layout, 8, seed=1))
    trainer = SimpleTrainer(model, _ListLoader([]), torch.optim.SGD(model.parameters(), lr=0.0))
    hook = RankStateHook(checkpoint_period=10, max_iter=20)
    hook.trainer = trainer
    trainer.iter = 5  # resumed from a checkpoint that had no RankStateHook state
    for rank, expected in ((0, 8), (1, 0)):
        monkeypatch.setattr(hooks_module.comm, "get_rank", lambda r=rank: r)
        hook.before_train()
        assert int(model.queues[0].count) == expected


def test_release_config_sets_every_release_value_at_once():
    import os

    from detectron2.config import get_cfg
    from util import REPO

    from ssprl_d2 import add_ssprl_config

    def load(name):
        cfg = get_cfg()
        add_ssprl_config(cfg)
        cfg.merge_from_file(os.path.join(REPO, "configs", "Pretrain", name))
        return cfg

    paper, release = load("ssprl_R_50_200ep_coco2014.yaml"), load(
        "ssprl_R_50_200ep_coco2014_release.yaml"
    )
    c = release.MODEL.SSPRL
    assert (c.CROSS_MU, c.CROSS_TARGETS, c.LOSS_REDUCTION, c.QUEUE_ROUNDING) == (
        "scores", "both", "mean", "release")
    assert release.MODEL.PIXEL_STD[0] == pytest.approx(0.228 * 255, abs=0.01)
    p = paper.MODEL.SSPRL
    assert (p.CROSS_MU, p.CROSS_TARGETS, p.LOSS_REDUCTION, p.QUEUE_ROUNDING) == (
        "softmax", "paired", "sum", "release")


def test_mean_reduction_halves_every_swapped_prediction_term():
    # the same model and crops: with two assigned crops per scale, "mean" is exactly half of "sum"
    model = _model()
    batch = random_batch(model.layout, 4, seed=3)
    for x in batch:
        x["photometric_done"] = True
    summed = {k: v.item() for k, v in model(batch).items()}
    model.loss_reduction = "mean"
    averaged = {k: v.item() for k, v in model(batch).items()}
    for s in range(3):
        assert averaged[f"loss_pyr_s{s}"] == pytest.approx(summed[f"loss_pyr_s{s}"] / 2, rel=1e-5)
        if s:
            key = f"loss_cross_s{s}"
            assert averaged[key] == pytest.approx(summed[key] / 2, rel=1e-5)


@pytest.mark.parametrize(
    "rounding, lengths", [("step", [1920, 4608, 4608]), ("release", [1920, 4992, 4992])]
)
def test_queue_rounding_paper_recipe(rounding, lengths):
    from ssprl_d2.modeling.queue import local_queue_length

    # 8 processes, global batch 128; patch scales add 4 and 9 embeddings per image and view
    got = [
        local_queue_length(n, 128, m, 8, rounding) * 8
        for n, m in zip([1920, 5000, 5000], [1, 4, 9])
    ]
    # "step": multiples of 128 x 4 = 512 and 128 x 9 = 1152 (both 4608 from 5000);
    # "release": 5000 - 5000 % 128 = 4992 at both patch scales
    assert got == lengths



def test_rank_state_round_trip_and_world_size_change_empties_queues():
    model = _model(**{"MODEL.SSPRL.QUEUE_LENGTHS": [16, 64, 144]})
    for q in model.queues:
        q.active = True
    model(random_batch(model.layout, 8, seed=1))
    saved = model.rank_state_dict()
    assert set(saved) == {f"queues.{s}.{b}" for s in range(3) for b in ("embeddings", "count")}
    trainer = SimpleTrainer(model, _ListLoader([]), torch.optim.SGD(model.parameters(), lr=0.0))
    hook = RankStateHook(checkpoint_period=10, max_iter=20)
    hook.trainer = trainer
    model.reset_rank_state()
    assert int(model.queues[0].count) == 0
    hook.load_state_dict({"world_size": 1, "ranks": [saved]})
    torch.testing.assert_close(model.queues[1].embeddings, saved["queues.1.embeddings"])
    hook.load_state_dict({"world_size": 4, "ranks": [saved] * 4})  # written by 4 processes
    assert all(int(q.count) == 0 for q in model.queues)


def test_queue_fill_count_is_known_on_the_host_through_push_reset_and_loading():
    from ssprl_d2.modeling.queue import EmbeddingQueue

    queue = EmbeddingQueue(2, 4, 3)
    queue.active = True
    queue.push([torch.ones(3, 3)] * 2)
    assert queue.filled == int(queue.count) == 3 and not queue.ready
    queue.push([torch.ones(3, 3)] * 2)
    assert queue.filled == int(queue.count) == 4 and queue.ready
    saved = copy.deepcopy(queue.state_dict())
    queue.reset()
    assert queue.filled == int(queue.count) == 0 and not queue.ready
    assert queue.embeddings.abs().sum() == 0
    queue.load_state_dict(saved)  # a resumed run: the loaded count is read back once
    assert queue.filled == 4 and queue.ready
    # the model's per-process state goes through the same path
    model = _model(**{"MODEL.SSPRL.QUEUE_LENGTHS": [16, 64, 144]})
    for q in model.queues:
        q.active = True
    model(random_batch(model.layout, 8, seed=1))
    model(random_batch(model.layout, 8, seed=2))
    state = model.rank_state_dict()
    model.reset_rank_state()
    assert [q.filled for q in model.queues] == [0, 0, 0]
    model.load_rank_state_dict(state)
    assert [q.filled for q in model.queues] == [16, 64, 144] and model.queues[0].ready


def test_put_scalars_reads_tensors_only_inside_a_storage():
    from detectron2.utils.events import EventStorage

    from ssprl_d2.modeling.pretrainer import put_scalars

    values = {"a": torch.tensor(1 / 3), "b": torch.tensor(2 / 7, dtype=torch.float64), "c": 0.5}
    put_scalars(**values)  # outside a trainer: nothing is read, nothing happens
    with EventStorage() as storage:
        put_scalars(**values)
    latest = {k: v for k, (v, _) in storage.latest().items()}
    assert latest == {k: float(v) for k, v in values.items()}
