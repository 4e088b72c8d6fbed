"""Speed switches: defaults keep the old behaviour, and each switch leaves the result alone."""

import torch
from detectron2.modeling import build_model
from util import random_batch, tiny_cfg

from ssprl_d2.data.build import PretrainLoader


def test_defaults_are_the_previous_behaviour():
    cfg = tiny_cfg()
    assert not cfg.MODEL.PRETRAIN.CHANNELS_LAST and not cfg.MODEL.PRETRAIN.COMPILE_TRUNK
    assert cfg.SOLVER.PRETRAIN.AMP_DTYPE == "float16"
    assert not cfg.DATALOADER.PRETRAIN.PIN_MEMORY and not cfg.DATALOADER.PRETRAIN.PERSISTENT_WORKERS


def _losses(channels_last):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.PRETRAIN.CHANNELS_LAST": channels_last}))
    losses = model(random_batch(model.layout, 4, seed=1))
    return model, {k: float(v.detach()) for k, v in losses.items()}


def test_channels_last_gives_the_same_losses():
    model, cl = _losses(True)
    conv = model.backbone.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    _, plain = _losses(False)
    for k in plain:
        assert abs(cl[k] - plain[k]) < 1e-4, (k, cl, plain)


def test_compiled_trunk_keeps_parameter_names():
    plain = build_model(tiny_cfg()).state_dict().keys()
    compiled = build_model(tiny_cfg(**{"MODEL.PRETRAIN.COMPILE_TRUNK": True})).state_dict().keys()
    assert list(compiled) == list(plain)


def test_loader_flags_reach_the_data_loader():
    loader = PretrainLoader(None, None, num_workers=2, pin_memory=True, persistent_workers=True)
    assert loader.pin_memory and loader.persistent_workers
    # persistent workers need workers
    assert not PretrainLoader(None, None, 0, persistent_workers=True).persistent_workers


def test_amp_dtype_option():
    from ssprl_d2.engine import train as train_net

    assert train_net.amp_options(tiny_cfg())["precision"] == torch.float16
    bf16 = train_net.amp_options(tiny_cfg(**{"SOLVER.PRETRAIN.AMP_DTYPE": "bfloat16"}))
    assert bf16["precision"] == torch.bfloat16 and not bf16["grad_scaler"].is_enabled()
