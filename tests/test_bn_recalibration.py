"""BN statistics re-estimated for a probe: exact averages inside, everything restored outside."""
import torch
from torch import nn

from ssprl_d2.evaluation.bn_recalibration import recalibrated_bn


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    with torch.no_grad():  # stored statistics that are not those of the data
        net[1].running_mean.fill_(5.0)
        net[1].running_var.fill_(9.0)
        net[1].num_batches_tracked.fill_(7)
    return net


def test_inside_the_block_the_statistics_are_the_average_over_all_batches():
    net = _net().eval()
    batches = [torch.randn(2, 3, 8, 8) * (i + 1) + i for i in range(3)]
    with recalibrated_bn(net, net, batches) as count:
        assert count == 2
        assert not net[1].training and not net[3].training
        with torch.no_grad():
            conv = torch.cat([net[0](b) for b in batches])
            # momentum None: the cumulative average of the per-batch means
            per_batch = torch.stack([net[0](b).mean(dim=(0, 2, 3)) for b in batches])
        torch.testing.assert_close(net[1].running_mean, per_batch.mean(0), rtol=1e-4, atol=1e-5)
        # eval-mode output normalises with them: close to zero mean, unit variance
        out = net[1](conv)
        assert out.mean(dim=(0, 2, 3)).abs().max() < 0.1
        assert (out.var(dim=(0, 2, 3)) - 1).abs().max() < 0.2


def test_statistics_momentum_and_mode_come_back_afterwards():
    net = _net()
    net.train()
    net[3].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = net[1].momentum
    with recalibrated_bn(net, net, [torch.randn(2, 3, 8, 8)]):
        assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net[1].momentum == momentum and "forward" not in net[1].__dict__
    assert net.training and net[1].training and not net[3].training


def test_restored_even_when_the_block_raises():
    net = _net().eval()
    before = net[1].running_mean.clone()
    try:
        with recalibrated_bn(net, net, [torch.randn(2, 3, 8, 8)]):
            raise RuntimeError("probe failed")
    except RuntimeError:
        pass
    assert torch.equal(net[1].running_mean, before) and not net[1].training


def test_a_network_without_batchnorm_is_left_alone():
    net = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    calls = []
    with recalibrated_bn(net, lambda b: calls.append(b), [torch.randn(1, 3)]) as count:
        assert count == 0
    assert calls == []  # no pass over the data when there is nothing to estimate


def test_disabled_it_keeps_the_stored_statistics_and_runs_nothing():
    net = _net().eval()
    calls = []
    with recalibrated_bn(net, lambda b: calls.append(b), [torch.randn(2, 3, 8, 8)],
                         enabled=False) as count:
        assert count == 0 and net[1].running_mean[0] == 5.0
    assert calls == [] and net[1].running_var[0] == 9.0
