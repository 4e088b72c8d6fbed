"""SLURM jobs of the training entry point (:mod:`ssprl_d2.engine.train`) through submitit: N nodes x G GPUs, requeue and resume.

One SLURM task per GPU. Each task reads its global rank, local rank, world size and the master
address from submitit's :class:`~submitit.JobEnvironment` and enters Detectron2's own distributed
worker (``detectron2.engine.launch._distributed_worker``: process group, the local process group
that ``detectron2.utils.comm`` needs, ``torch.cuda.set_device``, a barrier), which then calls
``main(args)`` of :mod:`ssprl_d2.engine.train`. On preemption or time-out submitit calls
:meth:`TrainJob.checkpoint`, which requeues the same command with ``--resume``, so the job
continues from ``OUTPUT_DIR/last_checkpoint`` (the last periodic checkpoint).

``cluster="local"`` runs the same job as local processes (CPU: gloo), which is how it is tested.
"""
import logging
import sys
from typing import Any, List, Optional, Sequence

import submitit

from ..checks import load_config_checked, run_command

__all__ = ["TrainJob", "submit_training"]

logger = logging.getLogger(__name__)


class TrainJob(submitit.helpers.Checkpointable):
    """One task of a training job: join the process group, run ``main(args)`` of the trainer.

    Args:
        argv: the ``tools/train_net.py`` command line without the launch flags
            (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url`` are set here).
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> Any:
        from detectron2.engine.launch import _distributed_worker

        env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        per_node = dist_env.local_world_size
        from .train import argument_parser, main

        # flags first: everything after the first KEY VALUE pair is a config override
        args = argument_parser().parse_args(
            ["--num-gpus", str(per_node), "--num-machines", str(env.num_nodes)]
            + ["--machine-rank", str(env.node)]
            + self.argv
        )
        args.dist_url = f"tcp://{dist_env.master_addr}:{dist_env.master_port}"
        logger.info(
            f"SLURM task: rank {dist_env.rank} / {dist_env.world_size}, local rank "
            f"{dist_env.local_rank} / {per_node}, node {env.node} / {env.num_nodes}, "
            f"init {args.dist_url}, job {env.job_id}"
        )
        # Detectron2's per-process entry: process group (NCCL on GPUs, gloo on CPUs), the local
        # process group of comm, set_device(local_rank), barrier, then main(args)
        return _distributed_worker(
            dist_env.local_rank,
            main,
            dist_env.world_size,
            per_node,
            env.node,
            args.dist_url,
            (args,),
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same command with ``--resume`` (called by submitit before preemption)."""
        argv = self.argv if "--resume" in self.argv else ["--resume"] + self.argv
        logger.info("Requeueing the training job with --resume")
        return submitit.helpers.DelayedSubmission(TrainJob(argv))


def submit_training(
    argv: Sequence[str],
    job_dir: str,
    nodes: int = 1,
    gpus_per_node: int = 8,
    cluster: Optional[str] = None,
    partition: Optional[str] = None,
    timeout_min: int = 72 * 60,
    cpus_per_task: int = 10,
    mem_gb: Optional[int] = None,
    name: str = "ssprl",
    slurm_extra: Optional[dict] = None,
) -> submitit.Job:
    """Submit ``tools/train_net.py <argv>`` over ``nodes`` x ``gpus_per_node`` processes.

    Args:
        argv: train_net arguments (``--config-file``, ``--resume``, ``--eval-only``, KEY VALUE).
        job_dir: submitit's folder for logs and pickles (``%j`` is replaced by the job id).
        nodes: number of machines.
        gpus_per_node: GPUs (= processes) per machine; on the local cluster without CUDA, the
            number of CPU processes.
        cluster: None (SLURM when available, else local), "slurm", "local" or "debug".
        partition: SLURM partition.
        timeout_min: wall-clock limit per allocation; the job requeues itself at the limit.
        cpus_per_task: CPU cores per process (data workers + main thread).
        mem_gb: memory per node, None for the cluster's default.
        name: the job name.
        slurm_extra: extra ``#SBATCH`` options, e.g. ``{"constraint": "volta32gb"}``.

    Returns:
        the submitted :class:`submitit.Job` (``job.result()`` waits for rank 0's result).
    """
    flags = {"--num-gpus", "--num-machines", "--machine-rank", "--dist-url"}
    clash = flags.intersection(a.split("=")[0] for a in argv)
    if clash:
        raise ValueError(f"{sorted(clash)} are set by the launcher from the SLURM environment")
    executor = submitit.AutoExecutor(folder=job_dir, cluster=cluster)
    params: dict = {
        "name": name,
        "nodes": nodes,
        "tasks_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "timeout_min": timeout_min,
    }
    if executor.cluster != "local" or _cuda_count() > 0:
        params["gpus_per_node"] = gpus_per_node
    if mem_gb is not None:
        params["mem_gb"] = mem_gb
    if partition:
        params["slurm_partition"] = partition
    if slurm_extra:
        params["slurm_additional_parameters"] = dict(slurm_extra)
    # SIGUSR2 this long before the limit: time to requeue
    params["slurm_signal_delay_s"] = 120
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(list(argv)))
    logger.info(f"Submitted job {job.job_id} ({nodes} x {gpus_per_node}); logs in {job_dir}")
    return job


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a dependency
        return 0


def main_cli(argv: Optional[List[str]] = None) -> int:  # pragma: no cover - thin wrapper
    """Entry of ``tools/launch_slurm.py`` (kept here so the tool stays thin)."""
    import argparse

    p = argparse.ArgumentParser(
        description="Submit tools/train_net.py to SLURM (or local processes) with submitit.",
        usage="launch_slurm.py [options] -- <train_net.py arguments>",
    )
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--partition", default=None)
    p.add_argument("--timeout-min", type=int, default=72 * 60)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=int, default=None)
    p.add_argument("--name", default="ssprl")
    p.add_argument("--job-dir", default="output/slurm/%j")
    p.add_argument("--constraint", default=None, help="SLURM --constraint")
    p.add_argument(
        "--local", action="store_true", help="run as local processes (no SLURM), e.g. to test"
    )
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    if not train_args:
        p.error("give the tools/train_net.py arguments after --")
    return run_command("launch_slurm", lambda: _submit(a, train_args))


def _submit(a: Any, train_args: List[str]) -> int:
    from .train import argument_parser

    # the config file and every key, here, before a job waits in the queue to fail
    args = argument_parser().parse_args(train_args)
    load_config_checked(args.config_file, args.opts)
    job = submit_training(
        train_args,
        a.job_dir,
        nodes=a.nodes,
        gpus_per_node=a.gpus_per_node,
        cluster="local" if a.local else None,
        partition=a.partition,
        timeout_min=a.timeout_min,
        cpus_per_task=a.cpus_per_task,
        mem_gb=a.mem_gb,
        name=a.name,
        slurm_extra={"constraint": a.constraint} if a.constraint else None,
    )
    print(f"job {job.job_id}: {a.nodes} node(s) x {a.gpus_per_node}, logs in {a.job_dir}")
    if a.wait:
        print(job.results()[0])
    sys.stdout.flush()
    return 0
