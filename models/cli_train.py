"""Arguments of `feredge train`."""
from __future__ import annotations

import argparse
import dataclasses

from feredge.models.train import TrainConfig

_DEFAULTS = TrainConfig(data="")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    d = _DEFAULTS
    p.add_argument("--data", help="FER-2013 CSV, a folder with train/ and test/, or class folders "
                                   "(default: the shipped sample, for a quick try)")
    p.add_argument("--arch", default=d.arch, help="seed000 | seed001 | seed002 | seed003 | edge, or seed004: the temporal head over a face's "
                        "last frames (see the seed004 options) (default: %(default)s)")
    p.add_argument("--out", help="run directory (default: runs/ARCH)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--train-split", default=d.train_split,
                   help="split of --data to train on: train (default) or 'none' for a plain class-folder set")
    p.add_argument("--val", default=d.val,
                   help="'test' (the data's test split, default), 'split:0.1' (stratified part of train) or a folder")
    p.add_argument("--epochs", type=int, help=f"(default: {d.epochs}; with --resume: extend the run to this many)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--optimizer", default=d.optimizer, choices=("adam", "sgd"),
                   help="adam, or sgd with Nesterov momentum (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="of sgd (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay per step, scaled by the learning rate; biases and batch "
                        "norm are exempt (default: %(default)s)")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("cosine", "plateau", "constant"))
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    p.add_argument("--patience", type=int, default=d.patience,
                   help="early stop after this many epochs without better validation accuracy (0: never)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--class-weights", default=d.class_weights, choices=("none", "balanced", "sqrt"))
    p.add_argument("--augment", default=d.augment, help="none | standard | strong | lowlight | camera (strong + sensor noise) (default: %(default)s)")
    p.add_argument("--equalize", default=d.equalize, choices=("none", "global", "clahe"))
    p.add_argument("--normalize", default=d.normalize, choices=("unit", "symmetric", "zscore"))
    p.add_argument("--input-size", type=int, help="square input side (default: the architecture's own)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or malformed images")
    p.add_argument("--mixed-precision", action="store_true",
                   help="compute in bfloat16 with float32 weights (1.4-1.7x faster on CPUs with AVX512-BF16/AMX); "
                        "the saved model is float32")
    p.add_argument("--teacher", dest="teachers", action="append", metavar="RUN",
                   help="distil from this trained run's soft labels (repeat to average several teachers); "
                        "git:REV means models/pretrained as commit REV holds it, git:REV:PATH another folder")
    p.add_argument("--distill-alpha", type=float, default=d.distill_alpha,
                   help="weight of the teachers' distribution against the true label (default: %(default)s)")
    p.add_argument("--distill-views", type=int, default=d.distill_views, metavar="K",
                   help="teachers label K fixed augmented copies of every image, as the student sees them, and "
                        "epoch e trains on copy e mod K; 0 labels the clean image once (default: %(default)s)")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help="softens the teachers' distribution (default: %(default)s)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from this trained model's weights (a .keras file, a run folder or git:REV[:PATH]): fine-tuning; "
                        "RUN/checkpoint/last.keras starts from a run's last epoch, not its best on validation")
    p.add_argument("--swa-epochs", type=int, default=d.swa_epochs,
                   help="save the average of the last N epochs' weights instead of the best epoch "
                        "(stochastic weight averaging; use with --lr-schedule constant; default: off)")
    p.add_argument("--flip-average", action="store_true",
                   help="run the trained model on each face and its mirror image and average (recorded in its "
                        "preprocess.json, so eval, export, runtime and bench all do it; 2x inference per face)")
    g = p.add_argument_group("several devices or machines (tf.distribute; docs/training.md)")
    g.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                   help="default: one process, no tf.distribute; mirrored: this machine's GPUs, or --cpu-devices N "
                        "logical CPU devices (MirroredStrategy); multiworker: the processes TF_CONFIG names, one per "
                        "machine (MultiWorkerMirroredStrategy), worker 0 writing --out "
                        f"(default: {d.strategy}; with --resume: as the run was)")
    g.add_argument("--cpu-devices", type=int, metavar="N",
                   help="with --strategy mirrored: split the CPU into N logical devices, one replica each "
                        "(for tests and CPU-only machines; default: the GPUs)")
    g.add_argument("--lr-scaling", choices=("none", "linear"),
                   help="--batch-size is always the global batch (batch/replicas per replica); none: --lr as "
                        "given; linear: --lr and --min-lr times the number of replicas, for when you multiplied "
                        f"--batch-size by it (default: {d.lr_scaling})")
    t = p.add_argument_group("seed004 (the temporal head; --data may also be clip folders or a video labels CSV)")
    t.add_argument("--frames", type=int, default=16, help="frames per clip, T (default: %(default)s: about 0.5 s at 30 FPS)")
    t.add_argument("--frame-model", default="", metavar="MODEL",
                   help="the frozen per-frame model whose log-probabilities the head reads (default: the shipped one)")
    t.add_argument("--units", type=int, default=32, help="LSTM units per direction (default: %(default)s)")
    t.add_argument("--dense", type=int, default=32, help="units of the dense layer after it (default: %(default)s)")
    t.add_argument("--switch-rate", type=float, default=0.25,
                   help="add spliced copies of this share of the training clips, whose expression changes "
                        "part-way (the label is the last one), so the head follows a change (default: %(default)s)")
    t.add_argument("--min-tail", type=int, default=4,
                   help="frames of the new expression at the end of a spliced clip (default: %(default)s)")
    t.add_argument("--unidirectional", action="store_true",
                   help="a forward-only LSTM instead of the paper's BiLSTM (for converters that cannot hold one)")


def run(args: argparse.Namespace) -> int:
    from feredge.models.train import resume, train

    out = args.out or f"runs/{args.arch}"
    if args.arch == "seed004":
        return _run_temporal(args, out)
    if args.resume:
        report = resume(out, epochs=args.epochs, strategy=args.strategy, cpu_devices=args.cpu_devices)
    else:
        from feredge.edge.paths import SAMPLE_DIR
        data, split, val = args.data, (None if args.train_split == "none" else args.train_split), args.val
        if data is None:  # the shipped sample is one class-folder set: hold a part of it out
            data, split, val = str(SAMPLE_DIR), None, "split:0.2" if args.val == "test" else args.val
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
        values.update(data=data, out=out, train_split=split, val=val)
        report = train(TrainConfig(**values), overwrite=args.overwrite)
    if "worker" in report:  # a worker of a multi-worker run other than the chief, which writes and reports
        print(f"worker {report['worker']}: done; the run is in {out}, written by worker 0")
        return 0
    chosen = (f"average of the last {report['averaged_epochs']} epochs" if report.get("averaged_epochs")
              else f"best epoch {report['best_epoch']}")
    print(f"{out}: {chosen} of {report['epochs_trained']}: "
          f"validation accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
    return 0


def _run_temporal(args: argparse.Namespace, out: str) -> int:
    from feredge.models.temporal_train import TemporalConfig, train_temporal

    if args.resume:
        raise ValueError("seed004 trains in minutes and has no --resume; use --overwrite to train it again")
    if args.data is None:
        raise ValueError("seed004 needs --data: labelled faces with train/ and test/ (made into clips), "
                         "clip folders or a video labels CSV")
    d = TemporalConfig(data="")
    report = train_temporal(TemporalConfig(
        data=args.data, out=out, frame_model=args.frame_model, frames=args.frames,
        train_split=None if args.train_split == "none" else args.train_split, val=args.val,
        limit=args.limit or d.limit, units=args.units, dense=args.dense, bidirectional=not args.unidirectional,
        epochs=args.epochs or d.epochs, patience=args.patience or d.patience, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, switch_rate=args.switch_rate, min_tail=args.min_tail), overwrite=args.overwrite)
    print(f"{out}: seed004 head, best epoch {report['best_epoch']} of {report['epochs_trained']}: clip accuracy "
          f"{report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} ({report['parameters']:,} parameters, "
          f"{report['macs']:,} MACs per clip); comparison in {out}/comparison.md")
    return 0
