"""`feredge train`: fit a network on labelled faces, resumably, into a run directory.

The epoch loop is ours rather than one long `model.fit`: each epoch's shuffling and augmentation
are drawn from (seed, epoch), and the learning-rate and early-stopping state are saved with the
checkpoint, so a run stopped at any epoch and resumed ends where an unbroken run would.

`--strategy mirrored|multiworker` runs the same loop on tf.distribute (models/distribute.py: the
batch and learning-rate rules, chief-only writing, the sharding of the training files).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from feredge.edge.fileio import write_text_atomic
from feredge.edge.preprocess import PreprocessSpec, fit_zscore, preprocess
from feredge.models import git_models
from feredge.models.augment import PRESETS, augment_batch
from feredge.evaluation.datasets import LabelledImages, list_dataset, load_dataset, stratified_split
from feredge.models.run_dir import LABELS_FILE, MODEL_FILE, SPEC_FILE, save_labels

log = logging.getLogger("feredge.train")

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


@dataclasses.dataclass
class TrainConfig:
    data: str
    arch: str = "edge"
    out: str = "runs/edge"
    train_split: str | None = "train"  # split of `data` to train on (None: `data` is one class-folder set)
    val: str = "test"  # "test": the data's test split; "split:F": stratified fraction F of train; or a path
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"  # cosine | plateau | constant
    optimizer: str = "adam"  # adam | sgd (Nesterov momentum)
    momentum: float = 0.9  # of sgd
    weight_decay: float = 0.0  # decoupled, per step x learning rate; not on biases or batch norm
    warmup_epochs: int = 0
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    patience: int = 15  # early stopping on validation accuracy; 0 disables
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced | sqrt
    augment: str = "standard"  # a preset of models.augment.PRESETS
    equalize: str = "none"
    normalize: str = "unit"
    input_size: int | None = None  # square input side; default: the architecture's own
    seed: int = 1234
    limit: int | None = None  # train on at most this many images (quick experiments, tests)
    skip_bad: bool = False
    mixed_precision: bool = False  # bf16 compute, float32 weights (AVX512-BF16/AMX CPUs); saves float32
    teachers: list[str] | None = None  # trained runs whose soft labels the student learns from
    distill_alpha: float = 0.5  # weight of the teachers' distribution in the target
    distill_temperature: float = 2.0
    distill_views: int = 0  # teachers label this many fixed augmented copies of each image; 0: the clean image
    init_from: str | None = None  # a trained model (.keras or run folder) whose weights start this run
    swa_epochs: int = 0  # ship the average of the last N epochs' weights (models/swa.py), not the best epoch
    flip_average: bool = False  # the model is to be run flip-averaged (edge.tta); recorded in its spec
    strategy: str = "default"  # default | mirrored | multiworker (tf.distribute; models/distribute.py)
    cpu_devices: int = 0  # mirrored: split the CPU into this many logical devices (0: GPUs, or the CPU as it is)
    lr_scaling: str = "none"  # none | linear: lr and min_lr times the number of replicas
    distribution: dict | None = None  # written by a distributed run: replicas, workers, batch per replica, rates

    def validate(self) -> None:
        if self.lr_schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(f"--lr-schedule must be cosine, plateau or constant, not {self.lr_schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"--optimizer must be adam or sgd, not {self.optimizer!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("--weight-decay must be >= 0 and --momentum in [0, 1)")
        if self.class_weights not in ("none", "balanced", "sqrt"):
            raise ValueError(f"--class-weights must be none, balanced or sqrt, not {self.class_weights!r}")
        if self.augment not in PRESETS:
            raise ValueError(f"--augment must be one of {', '.join(PRESETS)}, not {self.augment!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise ValueError("--distill-alpha must be in [0, 1] and --distill-temperature positive")
        if self.distill_views < 0 or (self.distill_views and not self.teachers):
            raise ValueError("--distill-views must be >= 0 and needs at least one --teacher")
        if self.distill_views and PRESETS[self.augment].is_identity:
            raise ValueError("--distill-views needs an augmentation preset: with --augment none every view is the same")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"--swa-epochs must be between 0 and --epochs ({self.epochs})")
        from feredge.models.distribute import LR_SCALINGS, STRATEGIES
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)}, not {self.lr_scaling!r}")
        if self.cpu_devices < 0 or (self.cpu_devices and self.strategy != "mirrored"):
            raise ValueError("--cpu-devices N (N >= 1) splits the CPU for --strategy mirrored only")


@dataclasses.dataclass
class TrainState:
    """Everything besides the weights and optimizer that a resumed run needs."""

    epochs_done: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    plateau_wait: int = 0
    plateau_best_loss: float = math.inf
    lr: float = 0.0
    history: dict = dataclasses.field(default_factory=dict)
    stopped_early: bool = False
    swa_averaged: int = 0  # epochs averaged into model.keras (0: it holds the best epoch)
    swa_val_accuracy: float | None = None


def learning_rate(cfg: TrainConfig, epoch: int, state: TrainState) -> float:
    """The rate for `epoch` (0-based); plateau decay lives in `state.lr`."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        progress = (epoch - cfg.warmup_epochs) / span
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "plateau":
        return state.lr or cfg.lr
    return cfg.lr


# Variable names that weight decay leaves alone: decaying a scale-invariant network's biases and
# batch-norm parameters only shrinks what the next layer undoes.
NO_DECAY = ("bias", "_bn/", "batch_normalization")


def build_optimizer(cfg: TrainConfig):
    from feredge.models.tf_env import keras

    decay = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=decay)
    else:
        opt = keras.optimizers.Adam(cfg.lr, weight_decay=decay)
    _exclude_from_weight_decay(opt)
    return opt


def _exclude_from_weight_decay(opt, built: bool = False) -> None:
    if built:
        # Keras keeps the exclusions out of a saved optimizer and refuses to set them on a built
        # (restored) one, but only reads these names when it applies the decay.
        opt._exclude_from_weight_decay_names = list(NO_DECAY)
    else:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))


def load_checkpoint_model(path: Path):
    """A checkpointed model with its optimizer state, decaying the same variables as before."""
    from feredge.models.model_io import load_keras_model

    model = load_keras_model(path, compile=True)
    _exclude_from_weight_decay(model.optimizer, built=True)
    return model


def class_weight_vector(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if mode == "none":
        return np.ones(num_classes, np.float32)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        weights = np.sqrt(weights)
    return weights.astype(np.float32)


def epoch_batches(data: LabelledImages, spec: PreprocessSpec, cfg: TrainConfig, epoch: int,
                  sample_weights: np.ndarray, targets: np.ndarray, views: list[np.ndarray] | None = None, *,
                  batch_size: int | None = None, stream: tuple[int, ...] = (), length: int | None = None):
    """Yield (x, target distribution, weight) batches for one epoch, drawn from (seed, epoch) alone.

    With `views` (fixed augmented copies, `augmented_views`) the epoch trains on copy epoch mod K
    and its own targets (K, N, C) instead of augmenting afresh. A worker of a distributed run gives
    its per-worker `batch_size`, its `stream` (distribute.Distribution.stream) and the common epoch
    `length`, which it reaches by repeating the start of its order."""
    rng = np.random.default_rng([cfg.seed, epoch, *stream])
    order = rng.permutation(len(data))
    if length is not None and length != len(order):
        order = np.resize(order, length)
    batch_size = batch_size or cfg.batch_size
    aug = PRESETS[cfg.augment]
    if views:
        images, targets = views[epoch % len(views)], targets[epoch % len(views)]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = preprocess(images[idx], spec) if views else preprocess(augment_batch(data.images[idx], aug, rng), spec)
        yield x, targets[idx], sample_weights[data.labels[idx]]


VIEW_STREAM = 7919  # keeps the views' random stream apart from the epochs' (seed, epoch) streams


def augmented_views(data: LabelledImages, cfg: TrainConfig, stream: tuple[int, ...] = ()) -> list[np.ndarray] | None:
    """`cfg.distill_views` augmented copies of every training image, each drawn from (seed, view) alone
    (and a worker's `stream`), so a resumed run rebuilds exactly the copies its stored targets were computed on."""
    if not cfg.distill_views:
        return None
    aug = PRESETS[cfg.augment]
    log.info("drawing %d augmented views of %d training images (%s)", cfg.distill_views, len(data), cfg.augment)
    return [augment_batch(data.images, aug, np.random.default_rng([cfg.seed, VIEW_STREAM, k, *stream]))
            for k in range(cfg.distill_views)]


@dataclasses.dataclass
class Shard:
    """Which part of the training set this process holds: its images are `positions` of the `total`
    training images, whose labels (all workers') are `labels`. One worker holds everything."""

    positions: np.ndarray
    total: int
    labels: np.ndarray
    dist: object = None  # distribute.Distribution of a multi-worker run; None for one worker

    @classmethod
    def whole(cls, data: LabelledImages) -> "Shard":
        return cls(np.arange(len(data)), len(data), data.labels)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """This shard's rows (N_shard, ...) put into the whole set's (total, ...), summed over workers."""
        if self.dist is None:
            return rows
        from feredge.models.distribute import sum_over_workers
        whole = np.zeros((self.total, *rows.shape[1:]), rows.dtype)
        whole[self.positions] = rows
        return sum_over_workers(self.dist, whole)


def training_targets(cfg: TrainConfig, run: Path, train_set: LabelledImages, resume: bool,
                     views: list[np.ndarray] | None = None, *, out: Path | None = None,
                     shard: Shard | None = None, views_workers: int = 1) -> np.ndarray:
    """One-hot labels, or with teachers the distilled targets (computed once, kept in the run):
    (N, C), or (K, N, C) with K augmented `views`.

    A worker of a multi-worker run (`shard`) labels its own images, the rows are gathered over the
    workers into the whole set's targets, which the chief keeps (`out` is where this process
    writes), and each worker returns its own rows. `views_workers`: the number of workers whose
    streams drew the views the stored targets label (a resume on another number labels again)."""
    out = out or run
    onehot = np.eye(len(train_set.classes), dtype=np.float32)[train_set.labels]
    if not cfg.teachers:
        return onehot
    from feredge.models.distill import TARGETS_FILE, TEACHERS_FILE, build_targets, describe_teacher

    workers = shard.dist.workers if shard is not None and shard.dist is not None else 1
    total = shard.total if shard is not None else len(train_set)
    mine = shard.positions if shard is not None else slice(None)
    stored = run / TARGETS_FILE
    if resume and stored.exists():
        targets = np.load(stored)
        if targets.shape == ((len(views),) if views else ()) + (total, onehot.shape[1]):
            if not views or views_workers == workers:
                return targets[:, mine] if views else targets[mine]
            log.warning("%s: views drawn by %d worker(s), this run has %d; labelling again", stored, views_workers,
                        workers)
        else:
            log.warning("%s: shape %s does not fit %d images; labelling again", stored, targets.shape, total)
    write_text_atomic(out / TEACHERS_FILE, json.dumps([describe_teacher(t) for t in cfg.teachers], indent=2) + "\n")
    targets = build_targets(cfg.teachers, train_set.images, train_set.labels, train_set.classes,
                            cfg.distill_alpha, cfg.distill_temperature, views)
    whole = targets
    if shard is not None and shard.dist is not None:
        whole = shard.gather(np.moveaxis(targets, 1, 0) if views else targets)
        whole = np.moveaxis(whole, 0, 1) if views else whole
    stored = out / TARGETS_FILE
    tmp = stored.with_name(".tmp." + stored.name)
    with open(tmp, "wb") as f:
        np.save(f, whole)
    tmp.replace(stored)
    return targets


def _load_splits(cfg: TrainConfig) -> tuple[LabelledImages, LabelledImages]:
    channels_color = False  # FER-style data is grayscale; 3-channel models get gray->RGB in preprocessing
    train = load_dataset(cfg.data, split=cfg.train_split, skip_bad=cfg.skip_bad, color=channels_color)
    if cfg.val.startswith("split:"):
        fraction = float(cfg.val.split(":", 1)[1])
        train_idx, val_idx = stratified_split(train.labels, fraction, cfg.seed)
        val = train.subset(val_idx)
        train = train.subset(train_idx)
    elif cfg.val == "test":
        val = load_dataset(cfg.data, split="test", skip_bad=cfg.skip_bad, color=channels_color)
    else:
        val = load_dataset(cfg.val, skip_bad=cfg.skip_bad, color=channels_color)
    if tuple(val.classes) != tuple(train.classes):
        raise ValueError(f"validation classes {val.classes} differ from training classes {train.classes}")
    if cfg.limit and cfg.limit < len(train):
        _, keep = stratified_split(train.labels, cfg.limit / len(train), cfg.seed)
        train = train.subset(keep)
    return train, val


def _load_shard(cfg: TrainConfig, workers: int, rank: int) -> tuple[LabelledImages, LabelledImages, Shard]:
    """`_load_splits` for worker `rank` of `workers`: the training list is drawn up from the labels
    alone (validation split, --limit: the same on every worker), sharded item i to worker i mod W
    (tf.data's Dataset.shard rule) and only this worker's items are decoded. The validation set is
    loaded whole. With nothing bad in the data and one worker, it gives what `_load_splits` gives."""
    from feredge.models.distribute import shard_positions

    listing = list_dataset(cfg.data, split=cfg.train_split, skip_bad=cfg.skip_bad)
    chosen = np.arange(len(listing))
    if cfg.val.startswith("split:"):
        fraction = float(cfg.val.split(":", 1)[1])
        chosen, val_idx = stratified_split(listing.labels, fraction, cfg.seed)
        val, _ = listing.decode(val_idx)
    elif cfg.val == "test":
        val = load_dataset(cfg.data, split="test", skip_bad=cfg.skip_bad)
    else:
        val = load_dataset(cfg.val, skip_bad=cfg.skip_bad)
    if tuple(val.classes) != tuple(listing.classes):
        raise ValueError(f"validation classes {val.classes} differ from training classes {listing.classes}")
    if cfg.limit and cfg.limit < len(chosen):
        _, keep = stratified_split(listing.labels[chosen], cfg.limit / len(chosen), cfg.seed)
        chosen = chosen[keep]
    positions = shard_positions(len(chosen), workers, rank)
    train, kept = listing.decode(chosen[positions])
    log.info("worker %d of %d: decoded its shard, %d of the %d training images", rank, workers, len(train), len(chosen))
    return train, val, Shard(positions[kept], len(chosen), listing.labels[chosen])


def _fit_zscore(images: np.ndarray, spec: PreprocessSpec, shard: Shard) -> PreprocessSpec:
    """fit_zscore over the whole training set when each worker holds a shard: the sums are summed over workers."""
    if shard.dist is None:
        return fit_zscore(images, spec)
    from feredge.edge.preprocess import prepare_uint8
    from feredge.models.distribute import sum_over_workers

    sums = np.zeros(3)
    for img in images:
        x = prepare_uint8(np.asarray(img), spec).astype(np.float64) / 255.0
        sums += (x.sum(), (x * x).sum(), x.size)
    total, total_sq, count = sum_over_workers(shard.dist, sums)
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 1e-12))
    return spec.replace(normalize="zscore", mean=round(mean, 6), std=round(std, 6))


def _save_checkpoint(run: Path, model, state: TrainState, average=None) -> None:
    """Swap in a complete checkpoint directory, so a kill at any moment leaves a usable one."""
    final, tmp, old = run / CHECKPOINT_DIR, run / (CHECKPOINT_DIR + ".tmp"), run / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "last.keras")
    (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
    if average is not None and average.count:
        from feredge.models.swa import AVERAGE_FILE
        average.save(tmp / AVERAGE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_dir(run: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        if (run / name / STATE_FILE).exists() and (run / name / "last.keras").exists():
            return run / name
    return None


def _save_model_atomic(model, path: Path, float32_twin=None) -> None:
    """Save weights and architecture without the optimizer (a third of the size) atomically.

    A mixed-precision model is saved as its float32 twin (same layers, float32 compute), so that
    export, evaluation and the devices never see bf16 layers."""
    from feredge.models.tf_env import keras

    bare = float32_twin() if float32_twin else keras.models.clone_model(model)
    bare.set_weights(model.get_weights())
    tmp = path.with_name(".tmp." + path.name)
    bare.save(tmp)
    tmp.replace(path)


def _check_bfloat16() -> None:
    """Fail before training if this TensorFlow cannot convolve in bfloat16 here. TensorFlow picks
    oneDNN's bf16 kernels from what the CPU reports (AVX512-BF16, AMX), but oneDNN refuses them when
    ONEDNN_MAX_CPU_ISA caps it lower, and the fit would abort at its first step with a graph error."""
    import os

    from feredge.models.tf_env import tf

    try:
        tf.nn.conv2d(tf.zeros((1, 8, 8, 1), tf.bfloat16), tf.zeros((3, 3, 1, 4), tf.bfloat16), 1, "SAME").numpy()
    except tf.errors.OpError:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        why = f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below them; unset it, or " if cap else ""
        raise ValueError(f"--mixed-precision: TensorFlow cannot run bfloat16 convolutions on this CPU "
                         f"({why}train without --mixed-precision)") from None


def _float32_builder(cfg: "TrainConfig", spec: PreprocessSpec, num_classes: int):
    """A function building the run's network with float32 compute, or None when it already is."""
    if not cfg.mixed_precision:
        return None

    def build():
        from feredge.models.architectures import build_model
        from feredge.models.tf_env import keras

        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            return build_model(cfg.arch, input_shape=spec.input_shape, num_classes=num_classes)
        finally:
            keras.mixed_precision.set_global_policy(previous)
    return build


def train(cfg: TrainConfig, *, overwrite: bool = False, verbose: int | None = None) -> dict:
    """Start a new run in `cfg.out`; returns the final evaluation on the validation set.

    Under --strategy multiworker only the chief checks, clears and writes `cfg.out`."""
    from feredge.models.distribute import task_for

    run = Path(cfg.out)
    chief = task_for(cfg.strategy).is_chief
    if chief and run.exists() and any(run.iterdir()):
        if not (run / CONFIG_FILE).is_file():  # never delete what this kit did not write
            raise FileExistsError(f"{run}: exists, is not empty and is not a training run ({CONFIG_FILE}); "
                                  f"choose another --out")
        if not overwrite:
            raise FileExistsError(f"{run}: already holds a run; use --resume to continue it or --overwrite")
        shutil.rmtree(run)
    created = chief and not run.exists()
    try:
        return _run(cfg, None, verbose)
    except BaseException:
        if created and run.is_dir() and not any(run.iterdir()):  # a run that failed before writing anything
            run.rmdir()
        raise


def resume(run: str | Path, *, epochs: int | None = None, verbose: int | None = None,
           strategy: str | None = None, cpu_devices: int | None = None) -> dict:
    """Continue a stopped run from its last checkpoint; `epochs` may extend the run. `strategy` and
    `cpu_devices` override how the run was distributed (default: as it was). Every worker of a
    multi-worker run reads the run directory, so it must be on storage they all see."""
    run = Path(run)
    ckpt = _checkpoint_dir(run) if run.is_dir() else None
    if ckpt is None or not (run / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run}: no checkpoint to resume from")
    stored = json.loads((run / CONFIG_FILE).read_text())
    if epochs:
        stored["epochs"] = epochs
    if strategy:
        keep = stored.get("cpu_devices", 0) if strategy == stored.get("strategy") == "mirrored" else 0
        stored["strategy"], stored["cpu_devices"] = strategy, keep
    if cpu_devices is not None:
        stored["cpu_devices"] = cpu_devices
    cfg = TrainConfig(**{**stored, "out": str(run)})
    return _run(cfg, ckpt, verbose)


def _run(cfg: TrainConfig, ckpt: Path | None, verbose: int | None) -> dict:
    from feredge.models import distribute

    cfg.validate()
    dist = distribute.create(cfg.strategy, cfg.cpu_devices)  # before any TensorFlow op runs
    if cfg.mixed_precision:
        _check_bfloat16()
    run = Path(cfg.out)  # the run: read when resuming, written by the chief
    out = distribute.output_dir(dist, run)  # where this process writes (a non-chief worker: a temporary folder)
    try:
        report = _train_and_finish(cfg, ckpt, verbose, dist, run, out)
        distribute.barrier(dist)  # the others wait for the chief's evaluation, then all leave together
        return report
    finally:
        distribute.release_output_dir(dist, out, run)


def _train_and_finish(cfg: TrainConfig, ckpt: Path | None, verbose: int | None, dist, run: Path, out: Path) -> dict:
    from feredge.models import distribute
    from feredge.models.architectures import build_model, count_macs
    from feredge.models.tf_env import generator_dataset, keras

    resume = ckpt is not None
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    views_workers = (cfg.distribution or {}).get("workers", 1)  # who drew the stored views' targets, when resuming
    plan = distribute.plan_batches(cfg.batch_size, dist.replicas, dist.workers, cfg.lr_scaling)
    cfg.distribution = None if dist.strategy is None else plan.record(dist, cfg.lr_scaling, cfg.lr, cfg.min_lr)
    if dist.strategy is not None:
        log.info("%s", distribute.describe(dist, plan, cfg.lr))
    # The schedule runs on the scaled rates; config.json keeps the rates as given, with the scaled ones
    # in `distribution`.
    hp = cfg if plan.lr_factor == 1 else dataclasses.replace(cfg, lr=cfg.lr * plan.lr_factor,
                                                             min_lr=cfg.min_lr * plan.lr_factor)

    if dist.workers == 1:
        train_set, val_set = _load_splits(cfg)
        shard = Shard.whole(train_set)
    else:
        train_set, val_set, shard = _load_shard(cfg, dist.workers, dist.rank)
        shard.dist = dist
    classes = train_set.classes
    counts = np.bincount(shard.labels, minlength=len(classes))
    log.info("train: %d images %s", shard.total, {name: int(n) for name, n in zip(classes, counts)})
    log.info("validation: %d images", len(val_set))

    if resume:
        spec = PreprocessSpec.load(run / SPEC_FILE)
        if out != run:
            spec.save(out / SPEC_FILE)
    else:
        from feredge.models.architectures import DEFAULT_INPUT, ARCHITECTURES
        if cfg.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {cfg.arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
        h, w, c = DEFAULT_INPUT[cfg.arch]
        if cfg.input_size:
            h = w = cfg.input_size
        spec = PreprocessSpec(height=h, width=w, channels=c, equalize=cfg.equalize,
                              normalize="unit" if cfg.normalize == "zscore" else cfg.normalize,
                              flip_average=cfg.flip_average)
        if cfg.normalize == "zscore":
            spec = _fit_zscore(train_set.images, spec, shard)
        spec.save(out / SPEC_FILE)
        save_labels(out / LABELS_FILE, classes)
    write_text_atomic(out / CONFIG_FILE, json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    with dist.scope():  # a distributed model's variables are mirrored on every replica
        if resume:
            model = load_checkpoint_model(ckpt / "last.keras")
            state = TrainState(**json.loads((ckpt / STATE_FILE).read_text()))
            state.stopped_early = False
            log.info("resuming %s after epoch %d of %d", run, state.epochs_done, cfg.epochs)
        else:
            model = build_model(cfg.arch, input_shape=spec.input_shape, num_classes=len(classes))
            if cfg.init_from:
                _load_initial_weights(model, cfg.init_from)
            model.compile(optimizer=build_optimizer(hp), loss=loss, metrics=["accuracy"])
            state = TrainState(lr=hp.lr)
    log.info("%s: %d parameters, %.1f M MACs per face", cfg.arch, model.count_params(), count_macs(model) / 1e6)

    x_val = preprocess(val_set.images, spec)
    y_val = np.eye(len(classes), dtype=np.float32)[val_set.labels]
    validation = (x_val, y_val) if dist.strategy is None else distribute.validation_dataset(x_val, y_val, 256)
    weights = class_weight_vector(shard.labels, len(classes), cfg.class_weights)
    views = augmented_views(train_set, cfg, dist.stream)
    targets = training_targets(cfg, run, train_set, resume, views, out=out, shard=shard, views_workers=views_workers)
    if dist.strategy is None:
        length, batch = None, cfg.batch_size
    else:  # every worker runs the same number of steps on batches of the same size
        sizes = distribute.sum_over_workers(dist, np.eye(dist.workers, dtype=np.int64)[dist.rank] * len(train_set))
        length, batch = distribute.epoch_length(sizes, dist.local_replicas), plan.per_worker
        if length != len(train_set):
            log.info("worker %d: %d images per epoch (its %d, the start of its order repeated to match the others)",
                     dist.rank, length, len(train_set))
    steps = math.ceil((length or len(train_set)) / batch)

    def batches(epoch):
        return epoch_batches(train_set, spec, hp, epoch, weights, targets, views, batch_size=batch, stream=dist.stream,
                             length=length)

    if verbose is None:
        verbose = 1 if sys.stderr.isatty() else 2
    if not dist.is_chief:
        verbose = 0

    average = _weight_average(cfg, ckpt)
    for epoch in range(state.epochs_done, cfg.epochs):
        if state.stopped_early:
            break
        lr = learning_rate(hp, epoch, state)
        model.optimizer.learning_rate.assign(lr)
        started = time.perf_counter()
        if verbose:
            print(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.2e}", file=sys.stderr, flush=True)
        if dist.strategy is None:
            data = generator_dataset(lambda e=epoch: batches(e), spec.input_shape, (len(classes),), ())
            result = model.fit(data, epochs=1, steps_per_epoch=steps, validation_data=validation,
                               validation_batch_size=256, verbose=verbose)
        else:
            data = distribute.distributed_batches(dist, lambda e=epoch: batches(e), spec.input_shape,
                                                  (len(classes),), ())
            result = model.fit(data, epochs=1, steps_per_epoch=steps, validation_data=validation, verbose=verbose)
        seconds = time.perf_counter() - started
        metrics = {k: float(v[-1]) for k, v in result.history.items()}
        metrics.update(lr=lr, seconds=seconds)
        for key, value in metrics.items():
            state.history.setdefault(key, []).append(value)
        state.epochs_done = epoch + 1
        _track_progress(hp, state, metrics, epoch, model, out, spec)
        if average is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            average.add(model.get_weights())
        _save_checkpoint(out, model, state, average)
        write_text_atomic(out / "history.json", json.dumps(state.history, indent=1) + "\n")
        log.info("epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f (best %.4f @ %d) %.0f s%s",
                 epoch + 1, cfg.epochs, metrics["loss"], metrics["accuracy"], metrics["val_loss"],
                 metrics["val_accuracy"], state.best_val_accuracy, state.best_epoch, seconds,
                 time_left(state.history["seconds"], cfg.epochs - epoch - 1))

    if average is not None and average.count and not state.swa_averaged:
        _finish_average(hp, state, model, average, out, spec, lambda: batches(cfg.epochs), validation)
    keras.mixed_precision.set_global_policy("float32")  # the saved model and anything after run in float32
    if not dist.is_chief:  # the chief evaluates and writes the results; this worker's folder is temporary
        log.info("worker %d: done; the run is in %s (written by worker 0)", dist.rank, run)
        return {"worker": dist.rank, "accuracy": state.swa_val_accuracy or state.best_val_accuracy,
                "macro_f1": float("nan"), "best_epoch": state.best_epoch, "epochs_trained": state.epochs_done,
                **({"averaged_epochs": state.swa_averaged} if state.swa_averaged else {})}
    return finish_run(run, val_set, spec, classes, state)


def time_left(epoch_seconds: list[float], epochs_left: int) -> str:
    """', about 2.5 h left' from the median of the last five epochs, so one slow epoch
    (a checkpoint, another process on the cores) does not swing the estimate."""
    if epochs_left <= 0 or not epoch_seconds:
        return ""
    left = statistics.median(epoch_seconds[-5:]) * epochs_left
    if left >= 5400:
        return f", about {left / 3600:.1f} h left"
    return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"


def _load_initial_weights(model, source: str) -> None:
    """Start from a trained model's weights (fine-tuning); the architecture must match exactly."""
    from feredge.models.model_io import load_keras_model

    path = git_models.resolve(source)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no trained model to start from (--init-from)")
    trained = load_keras_model(path)
    mine, theirs = [w.shape for w in model.get_weights()], [w.shape for w in trained.get_weights()]
    if mine != theirs:
        raise ValueError(f"{path}: its weights ({trained.count_params():,} parameters, {len(theirs)} arrays) do "
                         f"not fit the {model.name} network ({model.count_params():,} parameters, {len(mine)} arrays)")
    model.set_weights(trained.get_weights())
    log.info("starting from the weights of %s", path)


def _weight_average(cfg: TrainConfig, ckpt: Path | None):
    if not cfg.swa_epochs:
        return None
    from feredge.models.swa import AVERAGE_FILE, WeightAverage

    if ckpt is not None and (ckpt / AVERAGE_FILE).exists():
        return WeightAverage.load(ckpt / AVERAGE_FILE)
    return WeightAverage()


def _finish_average(cfg, state, model, average, run, spec, batches, validation) -> None:
    """Load the averaged weights, measure their batch-norm statistics on `batches()` (one epoch's
    batches of this worker) and save them as the run's model. `validation`: (x, y) or a dataset."""
    from feredge.models.swa import recalibrate_batchnorm

    model.set_weights(average.as_model_weights(model.get_weights()))
    recalibrate_batchnorm(model, (x for x, _, _ in batches()))
    if isinstance(validation, tuple):
        _, accuracy = model.evaluate(*validation, batch_size=256, verbose=0)
    else:
        _, accuracy = model.evaluate(validation, verbose=0)
    log.info("average of the last %d epochs: validation accuracy %.4f (best single epoch %.4f @ %d)",
             average.count, accuracy, state.best_val_accuracy, state.best_epoch)
    _save_model_atomic(model, run / MODEL_FILE, _float32_builder(cfg, spec, model.output_shape[-1]))
    state.swa_averaged, state.swa_val_accuracy = average.count, float(accuracy)
    _save_checkpoint(run, model, state, average)


def _track_progress(cfg: TrainConfig, state: TrainState, metrics: dict, epoch: int, model, run: Path,
                    spec: PreprocessSpec) -> None:
    if metrics["val_accuracy"] > state.best_val_accuracy:
        state.best_val_accuracy = metrics["val_accuracy"]
        state.best_epoch = epoch + 1
        state.epochs_without_improvement = 0
        _save_model_atomic(model, run / MODEL_FILE, _float32_builder(cfg, spec, model.output_shape[-1]))
    else:
        state.epochs_without_improvement += 1
        if cfg.patience and not cfg.swa_epochs and state.epochs_without_improvement >= cfg.patience:
            log.info("early stop: no better validation accuracy for %d epochs", cfg.patience)
            state.stopped_early = True
    if cfg.lr_schedule == "plateau":
        if metrics["val_loss"] < state.plateau_best_loss - 1e-4:
            state.plateau_best_loss, state.plateau_wait = metrics["val_loss"], 0
        else:
            state.plateau_wait += 1
            if state.plateau_wait >= cfg.plateau_patience:
                state.lr = max(cfg.min_lr, (state.lr or cfg.lr) * cfg.plateau_factor)
                state.plateau_wait = 0
                log.info("validation loss on a plateau: learning rate now %.2e", state.lr)


def finish_run(run: Path, val_set: LabelledImages, spec: PreprocessSpec, classes, state: TrainState) -> dict:
    """Evaluate the best model on the validation set and write curves, metrics and plots."""
    from feredge.evaluation.scoring import evaluate_model, write_evaluation
    from feredge.models.model_io import load_keras_model

    model = load_keras_model(run / MODEL_FILE)
    report = evaluate_model(model, val_set, spec, classes)
    report["best_epoch"] = state.best_epoch
    report["epochs_trained"] = state.epochs_done
    if state.swa_averaged:
        report["averaged_epochs"] = state.swa_averaged
    write_evaluation(report, run / "eval", title=f"{run.name} on validation")
    try:
        from feredge.evaluation.plots import plot_history
        plot_history(state.history, run / "history.png", title=run.name)
    except ImportError:
        log.warning("matplotlib is not installed: no history.png")
    return report
