"""Branches the fidelity review found untested (issue 25, item 6).

The local-global centre's all-reduce and MLS's shuffle-BN on two gloo processes against one
process computed by hand; ``MODEL.LOCALGLOBAL.LOSS_AVERAGE`` from a config against the pair loss
re-typed; the release config's SS-PRL losses against the release's L_pyr and L_cross re-typed from
WesleyHsieh0806/SS-PRL (``SS-PRL/main_SSPRL.py``: ``train``, ``distributed_sinkhorn``;
``src/utils.py``: ``concat_local_logits``; ``src/resnet50.py``: ``forward_l2g``) and
``train_SSPRL.sh``. (Local-global with drop path 0.1 from a config: tests/test_local_global.py.)
"""
import os
import tempfile
from typing import Dict, List, Sequence

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch.nn.parallel import DistributedDataParallel
from util import REPO, set_keys

import ssprl_d2.modeling.local_global as local_global_module
from ssprl_d2 import add_ssprl_config
from ssprl_d2.modeling.dino_loss import update_center
from ssprl_d2.modeling.pretrainer import pooled_trunk_features

LG_CPU_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "localglobal_ViT_tiny_cpu_synthetic.yaml"
)
MLS_CPU_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "mls_R_18_cpu_synthetic.yaml")
RELEASE_CONFIG = os.path.join(REPO, "configs", "Pretrain", "ssprl_R_50_200ep_coco2014_release.yaml")


def _cfg(path: str, **overrides):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return set_keys(cfg, **overrides)


def _two_process_worker(rank, world, init_file, out_dir):
    # one spawn for every two-process check (starting a process costs most of their time)
    torch.set_num_threads(1)  # two processes on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {"local_global": _lg_centre_part(rank), "mls": _mls_part(rank)}
        torch.save(out, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes() -> List[dict]:
    """What each of two gloo processes (ranks 0, 1) computed, each on half of the batches."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_two_process_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2,
                 join=True)
        return [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]


# ------------------------------------------------------------------ local-global
def _lg_tiny_cfg(**overrides):
    """The local-global CPU config shrunk: 16-px global and 8-px local crops, one block."""
    return _cfg(LG_CPU_CONFIG, **{
        "MODEL.VIT.EMBED_DIM": 24, "MODEL.VIT.DEPTH": 1, "MODEL.VIT.NUM_HEADS": 2,
        "MODEL.VIT.PATCH_SIZE": 8, "MODEL.VIT.PRETRAIN_IMG_SIZE": 16,
        "MODEL.LOCALGLOBAL.HEAD_OUT_DIM": 16, "MODEL.LOCALGLOBAL.HEAD_HIDDEN_DIM": 32,
        "MODEL.LOCALGLOBAL.HEAD_BOTTLENECK_DIM": 8,
        "INPUT.PRETRAIN.NMB_CROPS": [2, 2], "INPUT.PRETRAIN.SIZE_CROPS": [16, 8],
        "INPUT.PRETRAIN.MIN_SCALE_CROPS": [0.4, 0.05], "INPUT.PRETRAIN.MAX_SCALE_CROPS": [1.0, 0.4],
        **overrides,
    })


def _lg_batch(batch: int, seed: int = 0) -> List[dict]:
    """Augmented crops (16, 16, 8, 8 px) with boxes: image b's second local crop overlaps the
    global crops for even b only, so some pairs match patches and some match none."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batch):
        far = [8, 8, 24, 24] if b % 2 == 0 else [100, 100, 116, 116]
        boxes = [[0, 0, 32, 32], [8, 0, 40, 32], [0, 0, 16, 16], far]
        out.append({
            "crops": [torch.rand(3, s, s, generator=g) for s in (16, 16, 8, 8)],
            "photometric_done": True,
            "seed": seed * 100 + b,
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "flips": torch.tensor([False, b % 2 == 1, False, False]),
        })
    return out


def _lg_centre_part(rank: int) -> dict:
    # update_center alone, with unequal shares: rank 0 holds 3 views, rank 1 one
    logits = torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 2, 3) ** 1.5
    share = logits[:3] if rank == 0 else logits[3:]
    centre = torch.zeros(2, 3)
    update_center(centre, share, 0.9)
    # the model: identical weights on both ranks, each with half of a batch of 4 images
    torch.manual_seed(0)
    model = build_model(_lg_tiny_cfg()).train()
    model(_lg_batch(4)[2 * rank : 2 * rank + 2])
    return {"centre": centre, "model_centre": model.center.clone()}


def test_local_global_centre_on_two_processes_equals_one_process_with_the_whole_batch(
    two_processes,
):
    out = [o["local_global"] for o in two_processes]
    logits = torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 2, 3) ** 1.5
    for r in range(2):
        # the mean over all 4 views, not the mean of the two ranks' means (3 : 1 rows)
        torch.testing.assert_close(out[r]["centre"], 0.1 * logits.mean(dim=0))
    torch.manual_seed(0)
    model = build_model(_lg_tiny_cfg()).train()
    model(_lg_batch(4))
    assert model.center.abs().sum() > 0
    for r in range(2):
        torch.testing.assert_close(out[r]["model_centre"], model.center)


def _retyped_pair_loss(t_probs, s_logp, matches, average: str) -> torch.Tensor:
    # per image b with P_b matched pairs: "tokens" (H_cls + sum_p H_p) / (1 + P_b), "terms"
    # (H_cls + mean_p H_p) / 2 or H_cls alone without a match; the mean over images
    per_image = []
    for b, (idx_t, idx_s) in enumerate(matches):
        h_cls = -(t_probs[b, 0] * s_logp[b, 0]).sum()
        h = [-(t_probs[b, 1 + int(i)] * s_logp[b, 1 + int(j)]).sum()
             for i, j in zip(idx_t, idx_s)]
        if average == "tokens":
            per_image.append((h_cls + sum(h)) / (1 + len(h)))
        else:
            per_image.append((h_cls + sum(h) / len(h)) / 2 if h else h_cls)
    return torch.stack(per_image).mean()


def test_loss_average_from_the_config_reaches_the_model_and_gives_its_pair_loss(monkeypatch):
    real = local_global_module.local_global_pair_loss
    calls = []

    def spy(t_probs, s_logp, matches, average="tokens", patches=True):
        if patches:  # the loss's calls, not the CLS-only metric
            calls.append((t_probs.detach(), s_logp.detach(), matches, average))
        return real(t_probs, s_logp, matches, average, patches)

    monkeypatch.setattr(local_global_module, "local_global_pair_loss", spy)
    batch = _lg_batch(4)
    losses = {}
    for mode in ("tokens", "terms"):
        calls.clear()
        torch.manual_seed(0)
        model = build_model(_lg_tiny_cfg(**{"MODEL.LOCALGLOBAL.LOSS_AVERAGE": mode})).train()
        assert model.loss_average == mode
        loss = model(batch)["loss_local_global"]
        # 2 global teacher views x 3 other views, each combined as the config says
        assert len(calls) == 6 and {c[3] for c in calls} == {mode}
        matched = [len(m[0]) for c in calls for m in c[2]]
        assert 0 in matched and max(matched) > 0  # both branches of the per-image formula
        expected = torch.stack([_retyped_pair_loss(t, s, m, mode) for t, s, m, _ in calls])
        torch.testing.assert_close(loss.detach(), expected.mean())
        losses[mode] = float(loss.detach())
    assert losses["tokens"] != pytest.approx(losses["terms"], rel=1e-4)


# ------------------------------------------------------------------ MLS shuffle-BN
def _mls_cfg():
    """MLS CPU config shrunk, shuffle-BN on a plain-BN trunk, a frozen key encoder (momentum 1:
    the EMA leaves it bit-identical, so one process can recompute its keys exactly)."""
    return _cfg(MLS_CPU_CONFIG, **{
        "MODEL.MLS.KEY_BN": "shuffle", "MODEL.RESNETS.NORM": "BN", "MODEL.MLS.MOMENTUM": 1.0,
        "MODEL.MLS.HEAD_HIDDEN_DIM": 32, "MODEL.MLS.HEAD_OUT_DIM": 16,
        "MODEL.MLS.DICTIONARY_LENGTH": 16, "MODEL.MLS.TOP_K": 2,
        "MODEL.MLS.PRECISION_CLASSES": 0, "INPUT.PRETRAIN.SIZE_CROPS": [32],
        "SOLVER.IMS_PER_BATCH": 4,
    })


def _mls_batch(step: int) -> List[dict]:
    """The global batch of one step: 4 images, two augmented 32-px crops each."""
    g = torch.Generator().manual_seed(step)
    return [{"crops": [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
                       for _ in range(2)],
             "photometric_done": True, "seed": 1000 * step + b + 1} for b in range(4)]


def _mls_part(rank: int) -> dict:
    # DDP as the trainer builds it (buffers are per process: no broadcast), three SGD steps
    torch.manual_seed(0)
    model = build_model(_mls_cfg()).train()
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = {}
    for step in range(3):
        losses = ddp(_mls_batch(step)[2 * rank : 2 * rank + 2])
        if step == 0:
            out["dictionary_g"] = model.dictionary.g.clone()
            out["dictionary_z"] = model.dictionary.z.clone()
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    out.update(final_g=model.dictionary.g.clone(), final_z=model.dictionary.z.clone(),
               count=int(model.dictionary.count), loss=float(sum(losses.values()).detach()),
               query=model.backbone.stem.conv1.weight.detach().clone())
    return out


def test_mls_shuffle_bn_on_two_processes_gives_the_keys_of_the_shuffled_shares_in_order(
    two_processes,
):
    out = [o["mls"] for o in two_processes]
    # by hand on one process: the global batch permuted with rank 0's seed, cut into the two
    # ranks' shares, each share through the key encoder alone (its own BN statistics), the rows
    # put back in the global order
    torch.manual_seed(0)
    model = build_model(_mls_cfg()).train()
    batch = _mls_batch(0)
    images = model.views(batch)[1]  # keys come from the second view
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(batch[0]["seed"]))
    assert not torch.equal(perm.view(2, 2)[0].sort().values, torch.arange(2))  # rows move
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same kernels, so the same rounding
    with torch.no_grad():
        shares = [pooled_trunk_features(model.key_backbone, model.in_feature, images[p])
                  for p in perm.view(2, 2)]
        g = torch.cat(shares)
        z = torch.cat([model.key_head(share) for share in shares])
    torch.set_num_threads(threads)
    inverse = torch.argsort(perm)
    keys_g, keys_z = F.normalize(g, dim=1)[inverse], z[inverse]
    for r in range(2):
        # after the first step every rank's dictionary holds the global batch's keys in order
        torch.testing.assert_close(out[r]["dictionary_g"][:4], keys_g, rtol=0, atol=1e-6)
        torch.testing.assert_close(out[r]["dictionary_z"][:4], keys_z, rtol=0, atol=1e-6)
        assert out[r]["dictionary_g"][4:].abs().sum() == 0
    # unshuffled, BN would see other shares: the check above would fail without the shuffle
    with torch.no_grad():
        plain = F.normalize(torch.cat([
            pooled_trunk_features(model.key_backbone, model.in_feature, images[i : i + 2])
            for i in (0, 2)]), dim=1)
    assert not torch.allclose(plain, keys_g, atol=1e-4)
    # three DDP steps: the same dictionaries and query weights on both ranks
    assert out[0]["count"] == out[1]["count"] == 12
    torch.testing.assert_close(out[0]["final_g"], out[1]["final_g"], rtol=0, atol=0)
    torch.testing.assert_close(out[0]["final_z"], out[1]["final_z"], rtol=0, atol=0)
    torch.testing.assert_close(out[0]["query"], out[1]["query"])
    assert all(torch.isfinite(torch.tensor(o["loss"])) for o in out)


# ------------------------------------------------------------------ the release's SS-PRL loss
# train_SSPRL.sh: --temperature 0.1 --epsilon 0.05 --sinkhorn_iterations 3 --nmb_crops 2 6
# --grid_perside 2 3 --crops_for_assign 0 1 --loc_view_for_assign 0 1 --lambda1 0.25 0.25
# --lambda2 0.25 0.25 --nmb_ptypes 300 --nmb_local_ptypes 150 150
RELEASE = dict(temperature=0.1, epsilon=0.05, iters=3, nmb_crops=8, grids=(2, 3),
               lambda1=(0.25, 0.25), lambda2=(0.25, 0.25))


def _release_sinkhorn(out: torch.Tensor) -> torch.Tensor:
    # distributed_sinkhorn on one process
    Q = torch.exp(out / RELEASE["epsilon"]).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(RELEASE["iters"]):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def _release_codes(out: torch.Tensor, queue: torch.Tensor, new_z: torch.Tensor,
                   ptypes: torch.Tensor, rows: int) -> torch.Tensor:
    # the queue joins once full (its last row written), then is shifted and refilled in place;
    # every queue here fills at the same step, so the release's one use_the_queue flag for all
    # queues changes nothing
    if not torch.all(queue[-1, :] == 0):
        out = torch.cat((torch.mm(queue, ptypes.t()), out))
    queue[rows:] = queue[:-rows].clone()
    queue[:rows] = new_z
    return _release_sinkhorn(out)[-rows:]


def _release_losses(z: Sequence[torch.Tensor], ptypes: Sequence[torch.Tensor],
                    l2g: Sequence[torch.Tensor], queues: List[torch.Tensor], bs: int):
    """main_SSPRL.py's train(): (glb_loss, loc_loss_list, l2g_loss_list) of one step.

    z[s]: the head outputs of scale s (view-major; patch-major within a patch view), ptypes[s]:
    C_s, l2g[i]: the l2g_ptypes weight (K_0, K_s), queues[s]: (2, L_s, D), updated in place.
    """
    T = RELEASE["temperature"]
    glb_logits = z[0] @ ptypes[0].t()
    glb_loss, global_q = 0, []
    for i, view_id in enumerate((0, 1)):
        out = glb_logits[bs * view_id: bs * (view_id + 1)].detach()
        q = _release_codes(out, queues[0][i], z[0][bs * view_id: bs * (view_id + 1)],
                           ptypes[0], bs)
        global_q.append(q)
        subloss = 0
        for v in [v for v in range(RELEASE["nmb_crops"]) if v != view_id]:
            x = glb_logits[bs * v: bs * (v + 1)] / T
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        glb_loss += subloss / (RELEASE["nmb_crops"] - 1)
    glb_loss /= 2
    loc_list, l2g_list = [], []
    for i, grid in enumerate(RELEASE["grids"]):
        n_patch = grid * grid
        lbs = bs * n_patch
        logits = (z[i + 1] @ ptypes[i + 1].t()).reshape([2, lbs, -1])
        loc_z = z[i + 1].reshape([2, lbs, -1])
        loc_loss = 0
        for j, view_id in enumerate((0, 1)):
            loc_q = _release_codes(logits[view_id].detach(), queues[i + 1][j], loc_z[view_id],
                                   ptypes[i + 1], lbs)
            x = logits[1 - view_id] / T
            loc_loss -= torch.mean(torch.sum(loc_q * F.log_softmax(x, dim=1), dim=1)) / (2 - 1)
        loc_list.append(loc_loss / 2)
        l2g_loss = 0
        for v in range(2):
            # concat_local_logits, then forward_l2g (L2-normalise, bias-free linear)
            mean_logits = logits[v].reshape([n_patch, bs, -1]).permute(1, 0, 2).mean(dim=1)
            p_l2g = F.normalize(mean_logits, dim=1, p=2) @ l2g[i].t() / T
            for q_vid in global_q:
                l2g_loss -= torch.mean(torch.sum(q_vid * F.log_softmax(p_l2g, dim=1), dim=1))
        l2g_list.append(l2g_loss / (2 * len(global_q)))
    return glb_loss, loc_list, l2g_list


def _release_tiny_cfg():
    cfg = _cfg(RELEASE_CONFIG)
    c, ci = cfg.MODEL.SSPRL, cfg.INPUT.PRETRAIN
    # the release config is the release's run: its loss switches and weights
    assert (c.CROSS_MU, c.CROSS_TARGETS, c.LOSS_REDUCTION) == ("scores", "both", "mean")
    assert c.TEMPERATURE == RELEASE["temperature"] and c.SINKHORN_EPSILON == RELEASE["epsilon"]
    assert c.SINKHORN_ITERS == RELEASE["iters"] and list(c.CROPS_FOR_ASSIGN) == [0, 1]
    assert list(c.PYR_WEIGHTS) == [1.0, *RELEASE["lambda1"]] and c.CROSS_LAMBDA == 1.0
    assert list(c.CROSS_WEIGHTS) == list(RELEASE["lambda2"])
    assert list(ci.NMB_CROPS) == [2, 6] and list(ci.GRIDS) == list(RELEASE["grids"])
    assert list(c.NUM_PROTOTYPES) == [300, 150, 150] and c.QUEUE_START_EPOCH >= 0
    # shrunk: ResNet-18 with plain BN, 32/16-px crops, K_s 12/8/8, a batch of 4, queues that
    # fill in three steps at every scale (pushes of 4, 4 x 4 and 4 x 9 rows) and that the
    # paper's rounding would cut to 12, 32 and 72 rows (multiples of one step's rows)
    return set_keys(cfg, **{
        "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.RESNETS.NORM": "BN", "MODEL.SSPRL.HEAD_NORM": "BN",
        "MODEL.SSPRL.HEAD_HIDDEN_DIM": 32, "MODEL.SSPRL.HEAD_OUT_DIM": 16,
        "MODEL.SSPRL.NUM_PROTOTYPES": [12, 8, 8], "MODEL.SSPRL.QUEUE_LENGTHS": [12, 44, 100],
        "INPUT.PRETRAIN.SIZE_CROPS": [32, 16], "INPUT.PRETRAIN.PATCH_IMAGE_SIZES": [40, 54],
        "INPUT.PRETRAIN.PATCH_CROP_SIZES": [16, 16], "SOLVER.IMS_PER_BATCH": 4,
    })


def _release_batch(layout, step: int, batch: int = 4) -> List[dict]:
    g = torch.Generator().manual_seed(step)
    return [{"crops": [torch.randint(0, 256, (3, s.size, s.size), dtype=torch.uint8, generator=g)
                       for s in layout],
             "photometric_done": True, "seed": 100 * step + b} for b in range(batch)]


def test_release_config_losses_equal_the_release_formula_with_and_without_full_queues():
    torch.manual_seed(0)
    model = build_model(_release_tiny_cfg()).train()
    bs = 4
    # the release's per-process queues: length minus its remainder modulo the global batch
    lengths = [n - n % bs for n in (12, 44, 100)]
    assert [q.length for q in model.queues] == lengths
    for q in model.queue_modules():
        q.active = True  # what the queue-start hook does at QUEUE_START_EPOCH
    queues = [torch.zeros(2, n, 16) for n in lengths]
    captured: Dict[int, torch.Tensor] = {}
    for s, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, inp, out, s=s: captured.__setitem__(s, out.detach()))
    for step in range(4):
        full = all(q.ready for q in model.queue_modules())
        assert full == (step == 3)  # three steps fill every queue; the fourth uses them
        for m in model.prototype_modules():
            m.normalize_()  # ptypes_normalize() at every iteration
        with torch.no_grad():
            losses = model(_release_batch(model.layout, step))
        assert all(torch.allclose(captured[s].norm(dim=1), torch.ones(1)) for s in range(3))
        glb, loc, l2g = _release_losses(
            [captured[s] for s in range(3)], [p.weight.detach() for p in model.prototypes],
            [g.weight.detach() for g in model.cross_learners], queues, bs)
        expected = {"loss_pyr_s0": glb}
        for i in range(2):
            expected[f"loss_pyr_s{i + 1}"] = RELEASE["lambda1"][i] * loc[i]
            expected[f"loss_cross_s{i + 1}"] = RELEASE["lambda2"][i] * l2g[i]
        assert set(losses) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6, msg=key)
        total = glb + sum(a * x for a, x in zip(RELEASE["lambda1"], loc)) + sum(
            a * x for a, x in zip(RELEASE["lambda2"], l2g))
        torch.testing.assert_close(sum(losses.values()), total, rtol=1e-5, atol=1e-6)
    # the model's queues hold what the release's hold
    for s, q in enumerate(model.queues):
        torch.testing.assert_close(q.embeddings, queues[s])
