"""Every pre-training config's schedules against its reference's formula, re-typed here.

Learning rate: DINO's ``utils.cosine_scheduler`` (local-global), SwAV's ``lr_schedule`` in
``main_swav.py`` (SS-PRL and the release), MoCo v2's ``adjust_learning_rate`` (MLS); weight decay
and the teacher's momentum and temperature: DINO's ``wd_schedule``, ``momentum_schedule`` and
``DINOLoss.teacher_temp_schedule``. Values are compared at the first iteration, the peak (the
warm-up's last iteration), the middle of the cosine and the last iteration, to 1e-6 relative.
"""
import glob
import math
import os

import numpy as np
import pytest
import torch

from ssprl_d2.checks import load_config_checked
from ssprl_d2.engine.hooks import TeacherScheduleHook, WeightDecayScheduleHook
from ssprl_d2.engine.pretrain import build_pretrain_hooks, iterations_per_epoch
from ssprl_d2.engine.schedules import WarmupThenCosine
from ssprl_d2.engine.train import Trainer
from ssprl_d2.modeling.queue import local_queue_length

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "Pretrain", "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
# training images of each config's dataset (the configs' own epoch arithmetic)
IMAGES = {
    "imagenet_train_images": 1281167,
    "coco_2017_train_images": 118287,
    "coco_2014_train_images": 82783,
}


# ------------------------------------------------------------------ the references, re-typed
def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                          start_warmup_value=0.0):
    # facebookresearch/dino utils.py
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


def swav_lr_schedule(base_lr, final_lr, epochs, iters_per_epoch, warmup_epochs=0,
                     start_warmup=0.0):
    # facebookresearch/swav main_swav.py (the SS-PRL release's main_SSPRL.py is the same)
    warmup_lr_schedule = np.linspace(start_warmup, base_lr, iters_per_epoch * warmup_epochs)
    iters = np.arange(iters_per_epoch * (epochs - warmup_epochs))
    cosine_lr_schedule = np.array([final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(
        math.pi * t / (iters_per_epoch * (epochs - warmup_epochs)))) for t in iters])
    return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


def moco_lr(base_lr, epoch, epochs):
    # facebookresearch/moco main_moco.py adjust_learning_rate with --cos, once per epoch
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def dino_teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_epochs, nepochs):
    # facebookresearch/dino main_dino.py DINOLoss.__init__
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
        np.ones(nepochs - warmup_epochs) * teacher_temp,
    ))


# ------------------------------------------------------------------ what the trainer builds
def lr_at(cfg, iterations):
    """The learning rate the trainer's scheduler sets at each of ``iterations``."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    values = []
    for i in iterations:
        # the scheduler is stateless but for its step count: step from i - 1 to i
        scheduler.last_epoch = i - 1
        optimizer.step()  # no gradient: only keeps torch's step-order check quiet
        scheduler.step()
        values.append(optimizer.param_groups[0]["lr"])
    return values


class _Model:
    """What ``build_pretrain_hooks`` asks a pre-trainer, from the config (no trunk built)."""

    def __init__(self, cfg):
        from ssprl_d2.modeling.pretrainer import TeacherSchedule

        self.queue_start_epoch, self.freeze_prototypes_iters = -1, 0
        c = cfg.MODEL.LOCALGLOBAL
        self._teacher = TeacherSchedule(
            c.MOMENTUM, c.MOMENTUM_END, c.WARMUP_TEACHER_TEMP, c.TEACHER_TEMP,
            c.WARMUP_TEACHER_TEMP_EPOCHS, c.FREEZE_LAST_LAYER_EPOCHS,
        ) if cfg.MODEL.META_ARCHITECTURE == "LocalGlobal" else None

    def teacher_schedule(self):
        return self._teacher


def iters_per_epoch(cfg):
    # one process: the count of the configs' comments (drop_last: the release's 646)
    return iterations_per_epoch(IMAGES[cfg.DATASETS.TRAIN[0]], cfg.SOLVER.IMS_PER_BATCH, 1,
                                cfg.SOLVER.PRETRAIN.DROP_LAST)


def points(max_iter, warmup_iters):
    """First, peak (the warm-up's last iteration), middle of the cosine, last."""
    return [0, max(warmup_iters - 1, 0), warmup_iters + (max_iter - warmup_iters) // 2,
            max_iter - 1]


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("config", LEAVES)
def test_learning_rate_follows_the_reference(config):
    cfg = load_config_checked(config)
    s, arch = cfg.SOLVER, cfg.MODEL.META_ARCHITECTURE
    epoch = iters_per_epoch(cfg)
    epochs, rest = divmod(s.MAX_ITER, epoch)
    assert rest == 0 and s.WARMUP_ITERS % epoch == 0, "whole epochs"
    if arch in ("LocalGlobal", "MLS"):
        # DINO's and MoCo's loaders drop each process's last partial batch (16 x 64, 8 x 32)
        world = 16 if arch == "LocalGlobal" else 8
        assert epoch == math.ceil(IMAGES[cfg.DATASETS.TRAIN[0]] / world) // (
            s.IMS_PER_BATCH // world)
    at = points(s.MAX_ITER, s.WARMUP_ITERS)
    if arch == "LocalGlobal":
        # DINO: lr 5e-4 x batch / 256, linear warm-up from 0 over 10 epochs, cosine to 1e-6
        assert (s.BASE_LR, s.BASE_LR_END) == (5e-4 * s.IMS_PER_BATCH / 256, 1e-6)
        assert s.WARMUP_ITERS == 10 * epoch and s.WARMUP_FACTOR == 0.0
        reference = dino_cosine_scheduler(s.BASE_LR, s.BASE_LR_END, epochs, epoch,
                                          s.WARMUP_ITERS // epoch)
        expected = [reference[i] for i in at]
    elif arch == "SSPRL":
        # the release's train_SSPRL.sh: --base_lr 0.6 --final_lr 0.0006 --warmup_epochs 0
        assert (s.BASE_LR, s.BASE_LR_END, s.WARMUP_ITERS) == (0.6, 0.0006, 0)
        reference = swav_lr_schedule(s.BASE_LR, s.BASE_LR_END, epochs, epoch)
        expected = [reference[i] for i in at]
    else:
        # MoCo v2: no warm-up, per-epoch cosine to 0; also the middle of an epoch
        assert arch == "MLS" and (s.BASE_LR_END, s.WARMUP_ITERS) == (0.0, 0)
        at.append(epochs // 3 * epoch + epoch // 2)
        expected = [moco_lr(s.BASE_LR, i // epoch, epochs) for i in at]
    assert lr_at(cfg, at) == pytest.approx(expected, rel=1e-6)
    if arch == "LocalGlobal":
        # the warm-up's last iteration and the cosine's first are both at the peak
        assert lr_at(cfg, [s.WARMUP_ITERS]) == pytest.approx([s.BASE_LR], rel=1e-6)


@pytest.mark.parametrize("config", [c for c in LEAVES if "localglobal" in c])
def test_weight_decay_and_teacher_momentum_follow_dino(config):
    cfg = load_config_checked(config)
    s, c = cfg.SOLVER, cfg.MODEL.LOCALGLOBAL
    epoch = iters_per_epoch(cfg)
    epochs = s.MAX_ITER // epoch
    hooks = build_pretrain_hooks(cfg, IMAGES[cfg.DATASETS.TRAIN[0]], _Model(cfg))
    (wd,) = [h for h in hooks if isinstance(h, WeightDecayScheduleHook)]
    (teacher,) = [h for h in hooks if isinstance(h, TeacherScheduleHook)]
    # DINO: weight decay 0.04 -> 0.4 and momentum 0.996 -> 1, cosines without warm-up
    assert (s.WEIGHT_DECAY, s.PRETRAIN.WEIGHT_DECAY_END) == (0.04, 0.4)
    assert (c.MOMENTUM, c.MOMENTUM_END) == (0.996, 1.0)
    wd_ref = dino_cosine_scheduler(0.04, 0.4, epochs, epoch)
    momentum_ref = dino_cosine_scheduler(0.996, 1.0, epochs, epoch)
    at = points(s.MAX_ITER, s.WARMUP_ITERS) + [s.MAX_ITER // 2]
    assert [wd.value(i) for i in at] == pytest.approx([wd_ref[i] for i in at], rel=1e-6)
    assert [teacher.values(i)[0] for i in at] == pytest.approx(
        [momentum_ref[i] for i in at], rel=1e-6)
    # the method's (METHODS.md s.5) and DINO's default teacher temperature: 0.04 throughout
    assert {teacher.values(i)[1] for i in at} == {0.04}


def test_teacher_temperature_warm_up_is_dino_s_per_epoch_linspace():
    # DINO's README variant 0.04 -> 0.07 over 30 epochs, on the COCO config (115 iterations per
    # epoch): set once per epoch, the 30th warm-up epoch already at 0.07
    cfg = load_config_checked(
        "configs/Pretrain/localglobal_ViT_S_16_800ep_coco2017.yaml",
        ["MODEL.LOCALGLOBAL.TEACHER_TEMP", "0.07",
         "MODEL.LOCALGLOBAL.WARMUP_TEACHER_TEMP_EPOCHS", "30"],
    )
    epoch = iters_per_epoch(cfg)
    hooks = build_pretrain_hooks(cfg, IMAGES[cfg.DATASETS.TRAIN[0]], _Model(cfg))
    (teacher,) = [h for h in hooks if isinstance(h, TeacherScheduleHook)]
    reference = dino_teacher_temp_schedule(0.04, 0.07, 30, cfg.SOLVER.MAX_ITER // epoch)
    at = [0, epoch - 1, 15 * epoch + 57, 29 * epoch, 30 * epoch - 1, 30 * epoch,
          cfg.SOLVER.MAX_ITER - 1]
    got = [teacher.values(i)[1] for i in at]
    assert got == pytest.approx([reference[i // epoch] for i in at], rel=1e-6)
    assert got[:4] == pytest.approx([0.04, 0.04, 0.04 + 0.03 * 15 / 29, 0.07], rel=1e-6)


def test_ssprl_cpu_schedule_is_swav_cosine_at_every_iteration():
    # the demo's schedule: no warm-up, 0.15 -> 0.00015 over 150 iterations, every iteration
    cfg = load_config_checked("configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml")
    s = cfg.SOLVER
    reference = swav_lr_schedule(s.BASE_LR, s.BASE_LR_END, 150, 1)
    assert lr_at(cfg, range(150)) == pytest.approx(list(reference), rel=1e-12)


def test_warmup_then_cosine_hand_computed():
    # T = 10, W = 3 from 0: warm-up 0, 1/2, 1 (np.linspace), then the cosine over 7 iterations
    # to 0.1: t = 0 -> 1, t = 7 -> 0.1; steps of 2 hold t = 2k
    sched = WarmupThenCosine(10, 3, 0.0, 0.1)
    got = [sched(i / 10) for i in range(11)]
    cos = [0.1 + 0.45 * (1 + math.cos(math.pi * t / 7)) for t in range(8)]
    assert got == pytest.approx([0.0, 0.5, 1.0] + cos, rel=1e-12)
    stepped = WarmupThenCosine(10, 3, 0.0, 0.1, step_iters=2)
    assert [stepped(i / 10) for i in range(3, 10)] == pytest.approx(
        [cos[0], cos[0], cos[2], cos[2], cos[4], cos[4], cos[6]], rel=1e-12)
    # one warm-up iteration is np.linspace(start, 1, 1) = [start]
    assert WarmupThenCosine(4, 1, 0.25, 0.0)(0.0) == 0.25
    with pytest.raises(ValueError):
        WarmupThenCosine(10, 10)


def test_default_queue_lengths_are_the_release_s():
    # METHODS.md s.1 (the release's value, the paper being silent): 1920 and 5000 - 5000 % 128
    cfg = load_config_checked("configs/Pretrain/ssprl_R_50_200ep_coco2014.yaml")
    c = cfg.MODEL.SSPRL
    lengths = [local_queue_length(n, cfg.SOLVER.IMS_PER_BATCH, m, 8, c.QUEUE_ROUNDING) * 8
               for n, m in zip(c.QUEUE_LENGTHS, [1, 4, 9])]
    assert lengths == [1920, 4992, 4992]
    # the demo's queues are multiples of both units: unchanged
    demo = load_config_checked("configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml")
    d = demo.MODEL.SSPRL
    assert [local_queue_length(n, 16, m, 1, d.QUEUE_ROUNDING)
            for n, m in zip(d.QUEUE_LENGTHS, [1, 4, 9])] == [128, 512, 1152]
