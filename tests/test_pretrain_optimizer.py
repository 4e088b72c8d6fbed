"""build_pretrain_optimizer: SOLVER.PRETRAIN.LARS_EXCLUDE_BN_BIAS (issue 13)."""
import torch
from torch import nn
from util import tiny_cfg

from ssprl_d2.engine import build_pretrain_optimizer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _step(cfg):
    net = _net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_pretrain_optimizer(cfg, net)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return opt, {n: (p.detach() - before[n]) for n, p in net.named_parameters()}, before


def test_default_adapts_every_tensor_as_the_release():
    cfg = tiny_cfg(**{"SOLVER.PRETRAIN.LARS_TRUST": 0.001, "SOLVER.BASE_LR": 0.1})
    assert cfg.SOLVER.PRETRAIN.LARS_EXCLUDE_BN_BIAS is False
    opt, delta, _ = _step(cfg)
    assert len(opt.param_groups) == 1
    # the BN bias is zero-initialised: timm's trust ratio is 1 there, so its step is a plain one
    # (0.1); the BN weight (norm 2) gets a 0.001-scaled step
    assert torch.allclose(delta["1.weight"], torch.full((4,), -0.1 * 0.001 * 2 / 2), atol=1e-6)


def test_exclude_bn_bias_gives_1d_tensors_plain_sgd_without_decay():
    cfg = tiny_cfg(**{
        "SOLVER.PRETRAIN.LARS_TRUST": 0.001, "SOLVER.BASE_LR": 0.1, "SOLVER.WEIGHT_DECAY": 0.5,
        "SOLVER.PRETRAIN.LARS_EXCLUDE_BN_BIAS": True,
    })
    opt, delta, before = _step(cfg)
    assert len(opt.param_groups) == 2
    weights, vectors = opt.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and len(weights["params"]) == 2
    assert all(p.ndim == 1 for p in vectors["params"]) and len(vectors["params"]) == 4
    assert vectors["weight_decay"] == 0.0 and weights["weight_decay"] == 0.5
    # 1-d tensors: exactly -lr * grad (no trust ratio, no decay)
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.allclose(delta[name], torch.full_like(delta[name], -0.1)), name
    # matrices keep the layer-wise trust ratio (a step of about lr * trust * |w|, not lr * grad)
    for name in ("0.weight", "3.weight"):
        assert delta[name].norm() < 2 * 0.1 * 0.001 * before[name].norm(), name
