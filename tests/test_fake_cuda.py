"""One training step of every pre-trainer with its tensors on a fake CUDA device (CPU-only CI).

The model's parameters and buffers become fake CUDA tensors (shapes, dtypes and devices only, no
data), the inputs stay real CPU tensors as a DataLoader gives them, and the forward pass runs
under :class:`FakeCudaMode`: work on the host runs for real (the seeded random draws of the
photometric augmentation, patch matching on the crops' boxes), work on the device is fake. A
step then fails here, as it would on a GPU node, when it

- mixes a CPU tensor created in the step with a CUDA tensor (device mismatch),
- reads the device from the host (``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``,
  ``.cpu()``), which on a GPU is a synchronisation every step,
- writes device data into a host tensor, or
- computes a shape from device data (``torch.unique``, ``nonzero``, boolean masks).

Forward only (losses, Sinkhorn, queue and dictionary pushes, EMA teachers): fake CUDA tensors do
not run backward on a build without a GPU.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils import _pytree as pytree
from util import LG_CPU_CONFIG, mls_tiny_cfg, random_batch, set_keys, tiny_cfg

try:  # torch 2.14 names the error; 2.11 (the GPU node's) raises a plain RuntimeError
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
except ImportError:  # pragma: no cover - older torch
    FakeTensorDeviceMismatchError = RuntimeError

import ssprl_d2.modeling.local_global as local_global_module
import ssprl_d2.modeling.mls as mls_module
import ssprl_d2.modeling.ssprl as ssprl_module
from ssprl_d2.config import load_config

pytestmark = pytest.mark.skipif(
    not torch.backends.cuda.is_built(), reason="fake CUDA tensors need a CUDA build of torch"
)

_COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class DeviceToHostCopy(RuntimeError):
    """A step copied a device tensor to the host (a synchronisation on a GPU)."""


class HostWrite(RuntimeError):
    """A step wrote device data into a host tensor (a device mismatch, or a copy, on a GPU)."""


def _on_cuda(leaf: Any) -> bool:
    # a fake tensor (every device tensor of the step is one) or a CUDA device argument
    if isinstance(leaf, FakeTensor):
        return True
    return isinstance(leaf, torch.device) and leaf.type == "cuda"


class FakeCudaMode(FakeTensorMode):
    """Fake tensors for the CUDA device, real ones for the host.

    An operator that touches no fake tensor and no CUDA device runs for real, on the CPU, so that
    host-side work inside a step (random draws, ``nonzero`` on host masks, reading host tensors)
    behaves as on a GPU node. Everything else is fake, with :class:`FakeTensorMode`'s checks
    (device mismatch, data-dependent reads and shapes) and two more: a copy from the device to
    the host and a write of device data into a real host tensor are refused. Real tensors met on
    the fake path (the inputs) are converted to fake CPU tensors.
    """

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self._depth = 0  # > 0 inside FakeTensorMode's own dispatch (decompositions)

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._depth == 0:
            if not any(_on_cuda(leaf) for leaf in pytree.tree_leaves((args, kwargs))):
                return func(*args, **kwargs)
            _refuse_device_to_host_copy(func, args, kwargs)
            _refuse_host_writes(func, args, kwargs)
        self._depth += 1
        try:
            return super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._depth -= 1


def _refuse_device_to_host_copy(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    if func not in _COPIES:
        return
    if func is torch.ops.aten._to_copy.default:
        src, dst = args[0], torch.device(kwargs.get("device") or args[0].device)
    else:
        dst, src = args[0].device, args[1]
    if isinstance(src, torch.Tensor) and src.device.type == "cuda" and dst.type == "cpu":
        raise DeviceToHostCopy(f"{func}: a copy from the device to the host synchronises")


def _refuse_host_writes(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    # an in-place operator or out= argument on a real (host) tensor with device operands
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        for leaf in pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor) and not isinstance(leaf, FakeTensor):
                raise HostWrite(f"{func} writes device data into a host tensor")


def fake_cuda_step(model: nn.Module, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
    """One training forward pass of ``model`` with its parameters and buffers on fake CUDA.

    Args:
        model: built on the CPU, in train mode; its own tensors are left untouched (Python-side
            state, such as the queues' fill counts, follows the step).
        batched_inputs: the step's inputs, real CPU tensors.

    Returns:
        the loss dict.
    """
    mode = FakeCudaMode()
    with mode:
        state = {
            name: mode.from_tensor(t).to("cuda")
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        return torch.func.functional_call(model, state, (batched_inputs,))


def assert_fake_cuda_scalars(losses: Dict[str, torch.Tensor], names: Set[str]) -> None:
    """The step returned exactly ``names``, each a 0-dim fake tensor on the CUDA device."""
    assert set(losses) == names
    for name, value in losses.items():
        assert isinstance(value, FakeTensor), name
        assert value.device.type == "cuda" and value.shape == (), name


def spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> List[tuple]:
    """Record the (args, result) of every call of ``module.name`` (which keeps working)."""
    calls: List[tuple] = []
    original: Callable = getattr(module, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(module, name, recorded)
    return calls


def _unit_rows(rows: int, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim), dim=1)


# ------------------------------------------------------------------ the mode itself
def _cuda() -> torch.Tensor:
    return torch.zeros(4, 2, device="cuda")


# what a step must not do: (operation, what FakeCudaMode raises)
REFUSED = {
    "a CPU tensor with a CUDA one": (
        lambda: _cuda() + torch.ones(4, 2), FakeTensorDeviceMismatchError
    ),
    ".item()": (lambda: _cuda().sum().item(), DataDependentOutputException),
    "float()": (lambda: float(_cuda().sum()), DataDependentOutputException),
    "bool()": (lambda: bool(_cuda().any()), DataDependentOutputException),
    ".cpu()": (lambda: _cuda().cpu(), DeviceToHostCopy),
    "a device write into a host tensor": (
        lambda: torch.zeros(2).index_put_(
            (torch.zeros(1, dtype=torch.long, device="cuda"),), torch.ones(1, device="cuda")
        ),
        HostWrite,
    ),
    "torch.unique": (lambda: torch.unique(_cuda()), DynamicOutputShapeException),
    "a boolean mask": (lambda: _cuda()[_cuda()[:, 0] > 0], DynamicOutputShapeException),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_the_mode_refuses_what_a_gpu_step_must_not_do(what):
    operation, error = REFUSED[what]
    with FakeCudaMode(), pytest.raises(error):
        operation()


def test_the_mode_runs_host_work_for_real_and_moves_it_to_the_device():
    with FakeCudaMode():
        g = torch.Generator().manual_seed(0)
        chosen = torch.nonzero(torch.rand(8, generator=g) < 0.5).squeeze(1)
        assert chosen.numel() == int((torch.rand(8, generator=g.manual_seed(0)) < 0.5).sum())
        moved = _cuda()[chosen.to("cuda") % 4] * torch.tensor(2.0)  # a 0-dim CPU scalar is fine
    assert isinstance(moved, FakeTensor) and moved.device.type == "cuda"
    assert not isinstance(chosen, FakeTensor)


# ------------------------------------------------------------------ the pre-trainers
def _fill_queues(model: nn.Module) -> None:
    # switched on (QueueStartHook) and full, as after the first steps: Sinkhorn uses them
    for queue in model.queues:
        queue.active = True
        num_views, length, dim = queue.embeddings.shape
        queue.push([_unit_rows(length, dim) for _ in range(num_views)])
        assert queue.ready


def test_ssprl_step_with_full_queues(monkeypatch):
    torch.manual_seed(0)
    # each queue holds two steps' entries: 2 images x (1, 4, 9) patches per view, twice
    cfg = tiny_cfg(**{"SOLVER.IMS_PER_BATCH": 2, "MODEL.SSPRL.QUEUE_LENGTHS": [4, 16, 36]})
    model = build_model(cfg).train()
    assert model.photometric is not None  # the colour distortion runs in the step, on the device
    _fill_queues(model)
    codes = spy(monkeypatch, ssprl_module, "sinkhorn")
    pushes = spy(monkeypatch, type(model.queues[0]), "push")
    losses = fake_cuda_step(model, random_batch(model.layout, 2))
    assert_fake_cuda_scalars(
        losses, {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2", "loss_cross_s1", "loss_cross_s2"}
    )
    # Sinkhorn over queue + batch for both assigned views of every scale
    rows = [q.length + 2 * m for q, m in zip(model.queues, model.patches_per_scale)]
    assert [args[0].shape[0] for args, _ in codes] == [r for r in rows for _ in range(2)]
    assert all(code.device.type == "cuda" for _, code in codes)
    assert len(pushes) == 3 and all(q.ready for q in model.queues)


def test_mls_step_with_a_full_dictionary(monkeypatch):
    torch.manual_seed(0)
    model = build_model(mls_tiny_cfg(**{"MODEL.MLS.PRECISION_CLASSES": 3})).train()
    assert model.photometric is not None
    d = model.dictionary
    d.push(
        g=_unit_rows(d.length, d.g.shape[1]),
        z=_unit_rows(d.length, d.z.shape[1]),
        classes=torch.eye(3, dtype=torch.uint8)[torch.arange(d.length) % 3],
    )
    precision = spy(monkeypatch, mls_module, "pseudo_label_precision")
    batch = random_batch(model.layout, 4)
    for b, x in enumerate(batch):
        x["category_ids"] = [b % 3]
    losses = fake_cuda_step(model, batch)
    assert_fake_cuda_scalars(losses, {"loss_infonce", "loss_ml"})
    # the multi-label term and its metrics ran against the whole dictionary
    assert len(precision) == 1 and precision[0][0][2].shape == (d.length, 3)
    assert d.fill == 1.0


def _local_global_cfg() -> CfgNode:
    # the CPU schedule's model at its smallest: one block, 16-px global and 8-px local crops
    return set_keys(
        load_config(LG_CPU_CONFIG),
        **{
            "MODEL.VIT.EMBED_DIM": 24,
            "MODEL.VIT.DEPTH": 1,
            "MODEL.VIT.NUM_HEADS": 2,
            "MODEL.VIT.PRETRAIN_IMG_SIZE": 16,
            "MODEL.LOCALGLOBAL.HEAD_OUT_DIM": 16,
            "MODEL.LOCALGLOBAL.HEAD_HIDDEN_DIM": 32,
            "MODEL.LOCALGLOBAL.HEAD_BOTTLENECK_DIM": 8,
            "INPUT.PRETRAIN.NMB_CROPS": [2, 2],
            "INPUT.PRETRAIN.SIZE_CROPS": [16, 8],
            "SOLVER.IMS_PER_BATCH": 2,
        },
    )


def test_local_global_step_with_matched_patches(monkeypatch):
    torch.manual_seed(0)
    model = build_model(_local_global_cfg()).train()
    assert model.photometric is not None
    batch = random_batch(model.layout, 2)
    # as the data mapper records them: float32 [K, 4] source boxes, bool [K] flips; overlapping
    boxes = torch.tensor(
        [[0, 0, 32, 32], [8, 8, 40, 40], [0, 0, 16, 16], [24, 24, 40, 40]], dtype=torch.float32
    )
    for x in batch:
        x["boxes"], x["flips"] = boxes, torch.tensor([False, True, False, True])
    pair_losses = spy(monkeypatch, local_global_module, "local_global_pair_loss")
    losses = fake_cuda_step(model, batch)
    assert_fake_cuda_scalars(losses, {"loss_local_global"})
    # patch terms ran (matched tokens), besides the CLS-only metric terms
    assert any(sum(len(m[0]) for m in args[2]) > 0 for args, _ in pair_losses)
