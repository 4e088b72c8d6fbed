"""The pre-trainers' base classes: what every method shares and declares, and the release's
crop grouping and epoch counting."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from util import REPO, random_batch, tiny_cfg

from ssprl_d2 import add_ssprl_config
from ssprl_d2.data.views import build_view_layout
from ssprl_d2.engine import FreezePrototypesHook, QueueStartHook, TeacherScheduleHook
from ssprl_d2.engine.pretrain import build_pretrain_hooks, iterations_per_epoch
from ssprl_d2.modeling import (
    MLS,
    LocalGlobal,
    MomentumPretrainer,
    Pretrainer,
    group_crops_by_size,
)

PRETRAIN = os.path.join(REPO, "configs", "Pretrain")
QUICK = os.path.join(REPO, "configs", "quick_schedules")


def _cfg(path, **overrides):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def test_every_pretraining_meta_architecture_subclasses_the_base():
    pretrainers = [cls for _, cls in META_ARCH_REGISTRY
                   if getattr(cls, "task", None) == "pretrain"]
    assert {cls.__name__ for cls in pretrainers} >= {"SSPRL", "MLS", "LocalGlobal"}
    for cls in pretrainers:
        assert issubclass(cls, Pretrainer), cls
    assert issubclass(MLS, MomentumPretrainer) and issubclass(LocalGlobal, MomentumPretrainer)
    assert MLS.momentum_pairs[0] == ("backbone", "key_backbone")
    assert LocalGlobal.momentum_pairs[0] == ("backbone", "teacher_backbone")


def test_paper_layout_groups_by_size_in_three_calls_and_consecutively_in_four():
    # 2 x 224, 6 x 96 (scale 0), 8 x 112 (2x2 patches of both views), 18 x 96 (3x3 patches)
    layout = build_view_layout([2, 6], [224, 96], [2, 3], [112, 96])
    by_size = group_crops_by_size(layout)
    assert [(s, len(i)) for s, i in by_size] == [(224, 2), (112, 8), (96, 24)]
    runs = group_crops_by_size(layout, "consecutive")
    assert [(s, len(i)) for s, i in runs] == [(224, 2), (96, 6), (112, 8), (96, 18)]
    assert [i for _, idx in runs for i in idx] == list(range(34))
    with pytest.raises(ValueError, match="CROP_GROUPING"):
        group_crops_by_size(layout, "sorted")


def test_release_config_groups_crops_as_the_release_does():
    cfg = _cfg(os.path.join(PRETRAIN, "ssprl_R_50_200ep_coco2014_release.yaml"))
    assert cfg.MODEL.PRETRAIN.CROP_GROUPING == "consecutive"
    paper = _cfg(os.path.join(PRETRAIN, "ssprl_R_50_200ep_coco2014.yaml"))
    assert paper.MODEL.PRETRAIN.CROP_GROUPING == "size"
    # the model's step makes one trunk call per run: 32, 16 (small crops), 24 (2x2), 16 (3x3)
    model = build_model(tiny_cfg(**{"INPUT.PRETRAIN.PATCH_CROP_SIZES": [24, 16],
                                    "MODEL.PRETRAIN.CROP_GROUPING": "consecutive"}))
    calls = []
    forward = model.backbone.forward
    model.backbone.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    model.train()(random_batch(model.layout, 2))
    assert calls == [(2 * 2, 3, 32, 32), (2 * 6, 3, 16, 16), (2 * 8, 3, 24, 24),
                     (2 * 18, 3, 16, 16)]


@pytest.mark.parametrize("size,batch,world,drop_last,expected", [
    (82783, 128, 8, True, 646),   # COCO train2014, the release: ceil(82783 / 8) // 16
    (82783, 128, 8, False, 647),  # the last partial batch counted
    (100, 8, 2, True, 12),        # 50 images per process, 4 per batch: 12 full batches
    (101, 8, 2, True, 12),        # 51 per process (the sampler pads): still 12
    (96, 8, 2, True, 12),
    (5, 8, 1, True, 1),           # at least one iteration
])
def test_iterations_per_epoch(size, batch, world, drop_last, expected):
    assert iterations_per_epoch(size, batch, world, drop_last) == expected


def test_release_schedule_counts_646_iterations_per_epoch():
    cfg = _cfg(os.path.join(PRETRAIN, "ssprl_R_50_200ep_coco2014_release.yaml"))
    assert cfg.SOLVER.PRETRAIN.DROP_LAST
    assert cfg.SOLVER.MAX_ITER == 200 * 646 and cfg.SOLVER.CHECKPOINT_PERIOD == 10 * 646
    # the queue switch of a model built like the release's, on COCO train2014's size
    model = build_model(tiny_cfg(**{"MODEL.SSPRL.QUEUE_START_EPOCH": 80}))
    small = tiny_cfg(**{"SOLVER.IMS_PER_BATCH": 128, "SOLVER.PRETRAIN.DROP_LAST": True})
    hooks = build_pretrain_hooks(small, 82783, model)
    (queue_hook,) = [h for h in hooks if isinstance(h, QueueStartHook)]
    assert queue_hook.start_iter == 80 * 646


def test_hooks_come_from_what_each_model_declares():
    ssprl = build_model(tiny_cfg(**{"MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS": 7}))
    hooks = build_pretrain_hooks(tiny_cfg(), 80, ssprl)
    assert not any(isinstance(h, TeacherScheduleHook) for h in hooks)
    freezes = [h for h in hooks if isinstance(h, FreezePrototypesHook)]
    assert [(h.freeze_iters, h.modules) for h in freezes] == [(7, "prototype_modules")]

    cfg = _cfg(os.path.join(QUICK, "localglobal_ViT_tiny_cpu_synthetic.yaml"))
    lg = build_model(cfg)
    lg_cfg = cfg.MODEL.LOCALGLOBAL
    epoch = iterations_per_epoch(80, cfg.SOLVER.IMS_PER_BATCH)
    hooks = build_pretrain_hooks(cfg, 80, lg)
    (teacher,) = [h for h in hooks if isinstance(h, TeacherScheduleHook)]
    assert teacher.values(0) == pytest.approx((lg_cfg.MOMENTUM, lg_cfg.WARMUP_TEACHER_TEMP))
    assert teacher.values(cfg.SOLVER.MAX_ITER)[0] == pytest.approx(lg_cfg.MOMENTUM_END)
    freezes = [(h.freeze_iters, h.modules) for h in hooks if isinstance(h, FreezePrototypesHook)]
    assert (lg_cfg.FREEZE_LAST_LAYER_EPOCHS * epoch, "last_layer_modules") in freezes
    assert lg.trunk_name == "ViT-w96/8"  # the tiny CPU ViT: width 96, patch 8
    assert ssprl.trunk_name == "ResNet-18"


def test_every_method_counts_skipped_images():
    model = build_model(tiny_cfg()).train()
    batch = random_batch(model.layout, 2)
    batch[0]["skipped"] = 2
    model(batch)
    model(batch)
    assert model.skipped_images == 4


def test_inference_is_the_pooled_trunk_of_normalised_images_without_gradients():
    model = build_model(tiny_cfg()).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = model.inference([{"image": im} for im in images])
    x = (images.float() - model.pixel_mean) / model.pixel_std
    expected = torch.nn.functional.adaptive_avg_pool2d(model.backbone(x)["res5"], 1).flatten(1)
    got = torch.stack([o["features"] for o in out])
    assert not got.requires_grad
    torch.testing.assert_close(got, expected.detach())


def test_compile_switch_reaches_every_trunk_of_a_momentum_method():
    cfg = _cfg(os.path.join(QUICK, "mls_R_18_cpu_synthetic.yaml"),
               **{"MODEL.PRETRAIN.COMPILE_TRUNK": True})
    model = build_model(cfg)
    # nn.Module.compile wraps each module's own call; the copy is compiled after it is made
    assert model.backbone._compiled_call_impl is not None
    assert model.key_backbone._compiled_call_impl is not None
    assert model.key_backbone._compiled_call_impl is not model.backbone._compiled_call_impl


def test_vit_names():
    from ssprl_d2.modeling.vit import vit_name

    assert vit_name(384, 16) == "ViT-S/16" and vit_name(768, 16) == "ViT-B/16"
    assert vit_name(96, 8) == "ViT-w96/8"


@pytest.mark.parametrize("join,expected", [("full", [8 + 8, 32, 72]),
                                           ("any", [8 + 8, 64 + 32, 1000 + 72])])
def test_queue_join_any_is_the_release_shared_flag(monkeypatch, join, expected):
    import ssprl_d2.modeling.ssprl as ssprl_module

    # per-process lengths at a global batch of 8: 8, 64, 1000; one step fills only scale 0's
    model = build_model(tiny_cfg(**{"MODEL.SSPRL.QUEUE_LENGTHS": [8, 64, 1000],
                                    "MODEL.SSPRL.QUEUE_JOIN": join})).train()
    for queue in model.queue_modules():
        queue.active = True
    rows = []
    sinkhorn = ssprl_module.sinkhorn
    monkeypatch.setattr(ssprl_module, "sinkhorn", lambda s, *a: rows.append(s.shape[0]) or
                        sinkhorn(s, *a))
    batch = random_batch(model.layout, 8)
    model(batch)
    assert rows[::2] == [8, 32, 72]  # nothing full yet: this step's rows only (first view)
    rows.clear()
    model(batch)
    # scale 0's queue is full: "full" uses it alone; "any" lets every switched-on queue join,
    # its unwritten rows as zeros (the release's use_the_queue)
    assert rows[::2] == expected
