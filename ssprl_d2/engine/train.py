"""The training entry point: pre-training (SS-PRL, MLS, local-global ViT) and Detectron2
fine-tuning / evaluation, as Detectron2's ``tools/train_net.py`` but inside the package, so that
an installed wheel, the SLURM launcher, the transfer suite and the GPU check run it without a
checkout (``python -m ssprl_d2.engine.train``, the ``ssprl-train`` console command, or the thin
``tools/train_net.py``).

Pre-train (the paper's COCO recipe; the CPU smoke schedule is under configs/quick_schedules/):

    python tools/train_net.py --config-file configs/ssprl_pretrain.yaml --num-gpus 8

Resume an interrupted run from ``OUTPUT_DIR/last_checkpoint`` (queues, optimiser, schedule and the
data stream continue where they stopped):

    python tools/train_net.py --config-file configs/ssprl_pretrain.yaml --num-gpus 8 --resume

Several machines: ``--num-machines N --machine-rank R --dist-url tcp://HOST:PORT`` on each.
Evaluate a fine-tuned detector:

    python tools/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS <model.pth>
"""
import json
import logging
import os
import sys
import weakref
from typing import List, Optional

import detectron2.utils.comm as comm
import torch
from detectron2.config import CfgNode
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from ..atomic import atomic_write_bytes
from ..data.build import (
    build_multilabel_test_loader,
    build_multilabel_train_loader,
    build_pretrain_loader,
)
from ..data.builtin import register_from_cfg
from ..data.semseg import build_semseg_train_loader
from ..evaluation import (
    MultiLabelMAPEvaluator,
    build_detection_evaluator,
    build_sem_seg_evaluator,
)
from ..evaluation.probe_hook import build_probe_hook
from ..checks import (
    UserError,
    check_datasets,
    check_machine,
    check_resume_target,
    check_weights_file,
    checked_config_file,
    load_config_checked,
    run_command,
)
from ..modeling import get_task
from .checkpoint import AtomicDetectionCheckpointer, verify_loaded_weights
from .finetune import build_finetune_lr_scheduler, build_finetune_optimizer
from .hooks import unwrap_model
from .pretrain import build_pretrain_hooks, build_pretrain_optimizer
from .schedules import build_warmup_then_cosine_lr

__all__ = ["Trainer", "argument_parser", "cli", "main", "setup"]

# what differs per task (ssprl_d2.modeling.task); a task without an entry uses Detectron2's default
TRAIN_LOADERS = {
    "pretrain": build_pretrain_loader,
    "multilabel": build_multilabel_train_loader,
    "semseg": build_semseg_train_loader,
}
TEST_LOADERS = {"multilabel": build_multilabel_test_loader}
OPTIMIZERS = {
    "pretrain": build_pretrain_optimizer,
    "detection": build_finetune_optimizer,
    "semseg": build_finetune_optimizer,
}
# detection and semseg choose by the test set's evaluator_type (COCO, VOC, Cityscapes, sem_seg)
EVALUATORS = {
    "multilabel": MultiLabelMAPEvaluator,
    "detection": build_detection_evaluator,
    "semseg": build_sem_seg_evaluator,
}


class Trainer(DefaultTrainer):
    """DefaultTrainer with SS-PRL's loader, optimiser and hooks when pre-training.

    ``__init__`` is DefaultTrainer's with two differences: DistributedDataParallel gets no
    ``device_ids`` on the CPU (so ``--num-gpus N`` runs N gloo processes on a CPU machine), and
    checkpoints are written atomically.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        ddp_kwargs = {"device_ids": None} if on_cpu else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = AMPTrainer(model, data_loader, optimizer, **amp_options(cfg))
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        # DefaultTrainer keeps the hooks, but the inner trainer's run_step calls after_backward on
        # its own, empty, hook list: route it to ours, or no after_backward hook (the prototype
        # freeze, DINO's frozen last layer) ever runs.
        self._trainer.after_backward = self.after_backward
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        build = TRAIN_LOADERS.get(get_task(cfg))
        return build(cfg) if build else super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        build = TEST_LOADERS.get(get_task(cfg))
        return build(cfg, dataset_name) if build else super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        build = OPTIMIZERS.get(get_task(cfg))
        return build(cfg, model) if build else super().build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # Detectron2's schedules, "PolyLR" (mmsegmentation's poly with an end lr) and
        # "WarmupThenCosineLR" (the pre-training references' cosine after the warm-up)
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupThenCosineLR":
            return build_warmup_then_cosine_lr(cfg, optimizer)
        return build_finetune_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator = EVALUATORS.get(get_task(cfg))
        if evaluator is None:
            raise NotImplementedError(f"no evaluator for task {get_task(cfg)!r}")
        return evaluator(dataset_name, output_folder)

    def build_hooks(self):
        hooks = super().build_hooks()
        if get_task(self.cfg) == "pretrain":
            size = self._trainer.data_loader.dataset_size
            probe = build_probe_hook(self.cfg)
            # after the LR scheduler (the weight-decay and teacher schedules follow it), before
            # the checkpointer (the per-rank state must be gathered when it saves) and writers
            at = next(i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.LRScheduler)) + 1
            hooks[at:at] = build_pretrain_hooks(self.cfg, size, self.model) + (
                [probe] if probe else []
            )
        return hooks

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if self.cfg.MODEL.WEIGHTS and not resumed:
            # fine-tuning: every trunk tensor must come from the pre-trained file
            # (ViTDet's relative position biases are new: a pre-trained ViT has none)
            check_weights(self.cfg, self.checkpointer, self.model, trunk_prefixes(self.model),
                          exempt=(".rel_pos_",))
        loader = self._trainer.data_loader
        if hasattr(loader, "set_start_iter"):
            loader.set_start_iter(self.start_iter)


def amp_options(cfg):
    """AMPTrainer's autocast dtype from SOLVER.PRETRAIN.AMP_DTYPE; bfloat16 needs no loss scaling."""
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    name = cfg.SOLVER.PRETRAIN.AMP_DTYPE
    if name not in dtypes:
        raise ValueError(f"SOLVER.PRETRAIN.AMP_DTYPE must be one of {sorted(dtypes)}, got {name!r}")
    options = {"precision": dtypes[name]}
    if name == "bfloat16":
        options["grad_scaler"] = torch.amp.GradScaler("cuda", enabled=False)
    return options


def trunk_prefixes(model):
    """Where the pre-trained trunk lives in a fine-tuned model's state dict.

    An FPN backbone wraps the ResNet as ``bottom_up``, ViTDet's pyramid the ViT as ``net``; a C4
    model keeps res2-res4 in the backbone and res5 in the box head (``roi_heads.res5.<block>``;
    MoCo's extra norm after it is new).
    """
    keys = unwrap_model(model).state_dict().keys()
    for wrapped in ("backbone.bottom_up.", "backbone.net."):
        if any(k.startswith(wrapped) for k in keys):
            return (wrapped,)
    res5 = {".".join(k.split(".")[:3]) + "." for k in keys if k.startswith("roi_heads.res5.")}
    return ("backbone.", *sorted(p for p in res5 if p.split(".")[2].isdigit()))


def check_weights(cfg, checkpointer, model, required_prefix, exempt=()):
    """Fail loudly where MODEL.WEIGHTS left part of the model at its random initialisation."""
    model = unwrap_model(model)
    verify_loaded_weights(
        checkpointer.incompatible,
        model.state_dict().keys(),
        cfg.MODEL.WEIGHTS,
        required_prefix,
        cfg.MODEL.RESNETS.DEPTH,
        exempt,
    )


def write_results(cfg, results):
    """Evaluation results as JSON in OUTPUT_DIR (written atomically)."""
    path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    payload = {"weights": cfg.MODEL.WEIGHTS, "results": results}
    atomic_write_bytes(path, json.dumps(payload, indent=1, default=float).encode())
    logging.getLogger("detectron2").info(f"Evaluation results written to {path}")


def checked_config(args, files: bool = True) -> CfgNode:
    """The run's config, with every input checked before anything is built or written.

    The config file and keys (:func:`~ssprl_d2.checks.load_config_checked`), the user's datasets
    (``DATASETS.PRETRAIN.REGISTER``) and the ones named in ``DATASETS``, ``MODEL.WEIGHTS`` (unless a
    ``--resume`` continues a run), the ``--resume`` target, and the settings against the machine.

    Args:
        args: the parsed command line.
        files: also read the datasets' files and the checkpoints (once, in the process that
            parsed the command line: :func:`cli` does it before ``launch``, so the training
            processes do not read every checkpoint a second time).

    Raises:
        UserError: a mistake in the command line, the config or the files it names.
    """
    cfg = load_config_checked(args.config_file, args.opts)
    try:
        register_from_cfg(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not files:
        return cfg
    check_machine(cfg, args.num_gpus, args.num_machines)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise UserError("--eval-only needs MODEL.WEIGHTS <trained model .pth/.pkl>")
        check_weights_file(cfg.MODEL.WEIGHTS)
        check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
        return cfg
    if not len(cfg.DATASETS.TRAIN):
        raise UserError("DATASETS.TRAIN is empty: name at least one registered dataset")
    check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    resumed = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if resumed:
        check_resume_target(cfg.OUTPUT_DIR)
    else:
        check_weights_file(cfg.MODEL.WEIGHTS)
    return cfg


def setup(args):
    """The checked config (:func:`checked_config`), frozen; then Detectron2's ``default_setup``
    (which writes ``OUTPUT_DIR/config.yaml`` and the logs) and the package's logger."""
    # Detectron2's default_setup logs the file's contents: the one found
    args.config_file = checked_config_file(args.config_file)
    cfg = checked_config(args, files=not getattr(args, "inputs_checked", False))
    cfg.freeze()
    default_setup(cfg, args)
    # the package's own messages (queue switch, probe, skipped images) next to Detectron2's
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ssprl_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.load(cfg.MODEL.WEIGHTS)
        # evaluation: every tensor must come from the file, not from the random initialisation
        check_weights(cfg, checkpointer, model, "")
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            write_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    result = trainer.train()
    if comm.get_world_size() > 1:
        # spawned gloo workers can abort at exit unless their process group is torn down
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def argument_parser():
    """Detectron2's command line (``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, KEY VALUE ...)."""
    return default_argument_parser(epilog=__doc__)


def cli(argv: Optional[List[str]] = None) -> int:
    """``tools/train_net.py``, ``python -m ssprl_d2.engine.train`` and ``ssprl-train``: parse the
    command line, check every input (:func:`checked_config`: a mistake is one line on stderr and
    exit status 2, before anything is built or written), then run :func:`main` on every process
    through Detectron2's ``launch``."""
    args = argument_parser().parse_args(argv)

    def start() -> int:
        checked_config(args)
        args.inputs_checked = True  # travels with args to every training process
        logging.getLogger(__name__).info(f"Command line arguments: {args}")
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
        return 0

    return run_command("train_net", start)


if __name__ == "__main__":
    sys.exit(cli())
