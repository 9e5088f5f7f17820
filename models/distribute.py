"""tf.distribute for `feredge train`: the strategy, who writes, how batches and data are split.

`--strategy default` is the plain single-process path (no tf.distribute at all). `mirrored` is
MirroredStrategy over this machine's GPUs, or over N logical CPU devices with `--cpu-devices N`.
`multiworker` is MultiWorkerMirroredStrategy across processes or machines described by TF_CONFIG.

The rules, the same for both strategies:
- `--batch-size` is the global batch: the images behind one optimizer step, whatever the number of
  replicas R. Each of W workers draws `batch / W` images per step from its own shard, and each of
  its R / W replicas gets `batch / R` of them; the batch must divide by R. A recipe therefore
  means the same number of images per step on one device or many.
- The learning rate is `--lr` unless `--lr-scaling linear`, which multiplies `--lr` and `--min-lr`
  by R (for when you multiplied `--batch-size` by R to keep each replica's batch as it was).
- Worker 0 (the `chief` task if TF_CONFIG names one) writes the run directory. Every other worker
  runs the same steps, including saving (reading batch-norm statistics and metrics of a
  MultiWorkerMirroredStrategy model is itself a collective operation every worker must join),
  but into a temporary directory that it deletes at the end.
- The training files are sharded before decoding: worker w of W keeps items w, w+W, w+2W... of the
  training list (tf.data's `Dataset.shard(W, w)` rule), drawn up after the validation split and
  `--limit`, which every worker computes alike from the labels alone.

TensorFlow is imported only inside the functions that need it, so TF_CONFIG can be read (and a
run directory checked) before TensorFlow starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("feredge.distribute")

STRATEGIES = ("default", "mirrored", "multiworker")
LR_SCALINGS = ("none", "linear")


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster, read from TF_CONFIG without TensorFlow."""

    workers: int = 1
    rank: int = 0  # 0..workers-1; the chief is 0
    is_chief: bool = True
    address: str = ""


def tf_config_task(text: str | None = None) -> Task:
    """Parse TF_CONFIG (default: the environment's).

    {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 1}}
    makes 2 workers, of which index 0 is the chief. A cluster with a "chief" list counts its chief
    as rank 0 and worker i as rank i + 1. Parameter servers and evaluators are not supported.
    """
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        raise ValueError("--strategy multiworker needs TF_CONFIG in the environment, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG is not a cluster and task description ({exc}): {text[:200]}") from None
    other = sorted(set(cluster) - {"chief", "worker"})
    if other or kind not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG: only 'chief' and 'worker' tasks are supported, not {other or [kind]}")
    chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chiefs) > 1:
        raise ValueError(f"TF_CONFIG: one chief at most, not {len(chiefs)}")
    tasks = chiefs + workers
    rank = index if kind == "chief" else index + len(chiefs)
    if not 0 <= index < len(cluster.get(kind, [])):
        raise ValueError(f"TF_CONFIG: task {kind} {index} is not in the cluster's {len(cluster.get(kind, []))} {kind}s")
    return Task(workers=len(tasks), rank=rank, is_chief=rank == 0, address=tasks[rank])


def task_for(strategy: str) -> Task:
    """Where this process stands for `strategy`: one chief, except under multiworker."""
    return tf_config_task() if strategy == "multiworker" else Task()


@dataclasses.dataclass
class Distribution:
    """A created strategy and the numbers the training loop needs."""

    name: str
    strategy: object | None  # None: the plain path, no tf.distribute at all
    replicas: int = 1
    workers: int = 1
    rank: int = 0
    is_chief: bool = True
    devices: tuple[str, ...] = ()

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    @property
    def stream(self) -> tuple[int, ...]:
        """Extra seed words that keep the workers' random streams (shuffling, augmentation, views)
        apart; empty for one worker, so its streams are the plain run's."""
        return () if self.workers == 1 else (self.workers, self.rank)

    def scope(self):
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()


_MULTIWORKER = None  # MultiWorkerMirroredStrategy starts this process's collective server: once per process


def create(name: str, cpu_devices: int = 0) -> Distribution:
    """The strategy for `--strategy name`. Call it before any TensorFlow op runs: both logical CPU
    devices and MultiWorkerMirroredStrategy's collectives must be set up before TensorFlow starts."""
    global _MULTIWORKER
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    from feredge.models.tf_env import split_cpu, tf

    if cpu_devices:
        split_cpu(cpu_devices)
    if name == "default":
        return Distribution(name, None)
    # tf.distribute logs every all-reduce it sets up ("Reduce to ... then broadcast to ...") at INFO
    logging.getLogger("tensorflow").setLevel(max(logging.WARNING, logging.getLogger("tensorflow").level))
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and not cpu_devices:
            strategy = tf.distribute.MirroredStrategy()  # every visible GPU, NCCL all-reduce
        else:
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(cpus) == 1:
                log.warning("mirrored on one CPU device: one replica, no parallelism (split the CPU with --cpu-devices N)")
            strategy = tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
        return Distribution(name, strategy, strategy.num_replicas_in_sync, devices=tuple(strategy.extended.worker_devices))
    task = tf_config_task()
    if _MULTIWORKER is None:
        _MULTIWORKER = tf.distribute.MultiWorkerMirroredStrategy()
    strategy = _MULTIWORKER
    resolver = strategy.cluster_resolver
    log.info("worker %d of %d (%s %s at %s): connected", task.rank, task.workers, resolver.task_type,
             resolver.task_id, task.address)
    if strategy.num_replicas_in_sync % task.workers:
        raise RuntimeError(f"{strategy.num_replicas_in_sync} replicas cannot be spread evenly over {task.workers} workers")
    return Distribution(name, strategy, strategy.num_replicas_in_sync, task.workers, task.rank, task.is_chief,
                        tuple(strategy.extended.worker_devices))


# --- batch size and learning rate ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split and the learning rate scaled (the module docstring's rules)."""

    global_batch: int
    per_worker: int
    per_replica: int
    lr_factor: int

    def record(self, dist: Distribution, lr_scaling: str, lr: float, min_lr: float) -> dict:
        """What config.json keeps of a distributed run (`distribution`)."""
        return {"strategy": dist.name, "replicas": dist.replicas, "workers": dist.workers,
                "replicas_per_worker": dist.local_replicas, "devices": list(dist.devices),
                "global_batch_size": self.global_batch, "per_worker_batch_size": self.per_worker,
                "per_replica_batch_size": self.per_replica, "lr_scaling": lr_scaling,
                "lr": lr * self.lr_factor, "min_lr": min_lr * self.lr_factor,
                "sharding": ("none: one worker decodes the whole training list" if dist.workers == 1 else
                             f"training list item i to worker i mod {dist.workers}, before decoding")}


def plan_batches(global_batch: int, replicas: int, workers: int, lr_scaling: str) -> BatchPlan:
    if lr_scaling not in LR_SCALINGS:
        raise ValueError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)}, not {lr_scaling!r}")
    if global_batch % replicas:
        raise ValueError(f"--batch-size {global_batch} is the global batch and must divide by the {replicas} "
                         f"replicas (each gets batch/replicas); try {replicas * max(1, round(global_batch / replicas))}")
    return BatchPlan(global_batch, global_batch // workers, global_batch // replicas,
                     replicas if lr_scaling == "linear" else 1)


def describe(dist: Distribution, plan: BatchPlan, lr: float) -> str:
    where = (f"{dist.workers} workers x {dist.local_replicas} device(s)" if dist.workers > 1
             else f"1 worker x {dist.replicas} device(s): {', '.join(d.rsplit('/', 1)[-1] for d in dist.devices)}")
    scaled = (f"learning rate {lr:g} x {plan.lr_factor} replicas = {lr * plan.lr_factor:g} (--lr-scaling linear)"
              if plan.lr_factor > 1 else f"learning rate {lr:g} as given (--lr-scaling none)")
    return (f"strategy {dist.name}: {dist.replicas} replicas ({where}); global batch {plan.global_batch} = "
            f"{plan.per_worker} per worker = {plan.per_replica} per replica; {scaled}")


# --- data ------------------------------------------------------------------------------------

def shard_positions(n: int, workers: int, rank: int) -> np.ndarray:
    """Worker `rank`'s items of a list of `n`: rank, rank + workers, ... (tf.data's Dataset.shard)."""
    if not 0 <= rank < workers:
        raise ValueError(f"worker {rank} of {workers}?")
    return np.arange(rank, n, workers, dtype=np.int64)


def epoch_length(shard_sizes, local_replicas: int) -> int:
    """Images every worker draws per epoch: the largest shard, rounded up to a multiple of the
    worker's replicas. Workers with fewer repeat the start of their epoch's order (as PyTorch's
    DistributedSampler pads), so every worker runs the same number of steps (the collectives
    must pair up) and no replica ever gets an empty batch."""
    longest = int(max(shard_sizes))
    return math.ceil(longest / local_replicas) * local_replicas


def replica_batches(batches, local_replicas: int):
    """Split each per-worker batch (a tuple of arrays) into `local_replicas` consecutive parts, in
    replica order: distribute_datasets_from_function hands a worker's elements to its replicas in
    turn, so one step takes one part each."""
    for batch in batches:
        if local_replicas == 1:
            yield batch
            continue
        for part in np.array_split(np.arange(len(batch[0])), local_replicas):
            yield tuple(a[part] for a in batch)


def distributed_batches(dist: Distribution, batches, *shapes):
    """A distributed tf.data dataset of this worker's per-replica batches from the generator
    function `batches`, through distribute_datasets_from_function (one input pipeline per worker)."""
    from feredge.models.tf_env import generator_dataset

    def dataset_fn(context):
        if (context.num_input_pipelines, context.input_pipeline_id) != (dist.workers, dist.rank):
            raise RuntimeError(f"input pipeline {context.input_pipeline_id} of {context.num_input_pipelines}, "
                               f"but this is worker {dist.rank} of {dist.workers}")
        return generator_dataset(lambda: replica_batches(batches(), dist.local_replicas), *shapes)

    return dist.strategy.distribute_datasets_from_function(dataset_fn)


def validation_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """Validation data for a distributed fit or evaluate: each worker evaluates its share of the
    batches (auto-shard by DATA; the data is small and every worker holds it) and the metrics are summed."""
    from feredge.models.tf_env import tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options)


def sum_over_workers(dist: Distribution, array: np.ndarray) -> np.ndarray:
    """The element-wise sum of `array` over all workers (an all-reduce; every worker must call it,
    in the same order). One replica per worker contributes; the others add zeros."""
    array = np.asarray(array)
    if dist.workers == 1:
        return array
    from feredge.models.tf_env import tf

    local = dist.local_replicas
    value = tf.constant(array)
    zeros = tf.zeros_like(value)
    per_replica = dist.strategy.experimental_distribute_values_from_function(
        lambda context: value if context.replica_id_in_sync_group % local == 0 else zeros)
    return dist.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()


def barrier(dist: Distribution) -> None:
    """Wait until every worker gets here. The other workers wait for the chief's final evaluation
    before they exit: a worker that leaves early stops its heartbeats, and the chief's coordination
    service then reports it as crashed."""
    if dist.workers > 1:
        sum_over_workers(dist, np.zeros(1))


# --- the run directory -------------------------------------------------------------------------

def output_dir(dist: Distribution, run: Path) -> Path:
    """Where this process writes: the run directory for the chief, a temporary directory (deleted
    by `release_output_dir`) for every other worker."""
    if dist.is_chief:
        return run
    return Path(tempfile.mkdtemp(prefix=f"feredge-worker{dist.rank}-"))


def release_output_dir(dist: Distribution, out: Path, run: Path) -> None:
    if not dist.is_chief and out != run:
        shutil.rmtree(out, ignore_errors=True)
