"""Ship a trained run as the kit's default model and write its MODEL_CARD.md from measured figures.

    python -m feredge.models.model_card runs/edge --data path/to/fer2013 --compare comparison.json

copies model.keras, preprocess.json and labels.json into models/pretrained/ with the run's small
record files (config, history, final state, teachers), so the shipped folder stays a run that
later runs can start from, distil from or compare with after the run folder is gone. It evaluates
the model on the data's test split, copies the confusion matrix and training curves beside it, keeps
the comparison records as comparison.json, and writes MODEL_CARD.md: every number in the card
comes from this evaluation, the run's own history and config, or the `feredge compare` records
given with --compare. Sections of the old card between <!-- hand-written --> markers are kept.

    python -m feredge.models.model_card --comparison-only --compare comparison.json

rewrites only the card's comparison section (and comparison.json), for a seed network trained
after the shipped model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from feredge.edge.fileio import write_text_atomic
from feredge.edge.paths import PRETRAINED_DIR, SHIPPED_RUNS
from feredge.models import git_models

COMPARED_SEEDS = ("seed001", "seed003", "seed000")  # the seed networks the card compares the model with

LIMITATIONS = """\
- **Label noise and duplicates.** About 1,500 groups of byte-identical FER-2013 images exist,
  some across train and test, a few with conflicting labels. Human accuracy on it is often
  quoted near 65 %; the test figures include those errors.
- **One test set.** PublicTest was used to judge every candidate model, so its figure is
  somewhat optimistic; two seeds of one recipe differ by up to 40 faces (1.1 points) here.
- **Demographic coverage.** The faces come from web searches; age, skin tone and gender are not
  balanced and were not audited. Expect uneven accuracy across groups.
- **Posed versus spontaneous.** Many images are posed or exaggerated; subtle, spontaneous
  expressions are harder, and a single frame is ambiguous (the runtime smooths over frames).
- **Input assumptions.** A roughly frontal face, cropped by a face detector, 48x48 grayscale.
  Profile views, occlusion (masks, hands), strong backlight and small faces degrade it
  (`feredge eval --perturb` measures how much); `fear` and `sad` are the weakest classes.
"""

INTENDED_USE = """\
Research, teaching and prototyping of on-device facial-expression recognition; benchmarking edge
runtimes; aggregate, consented, non-identifying measurements (say, a demo audience over a
session). The output is a guess at which of seven expression categories a face crop resembles,
not a measurement of what anyone feels.
"""

OUT_OF_SCOPE = """\
- Decisions about individuals: hiring, admission, grading, policing, border control, credit,
  insurance, health or mental-health assessment.
- Inferring emotions, intentions, honesty or mental states as facts.
- Surveillance or monitoring of people who have not given informed consent; identifying people.
- Children, clinical populations or any group the training data does not represent, without a
  new evaluation on that group.
"""

DATA_TEXT = """\
FER-2013 (Goodfellow et al., ICML 2013 workshop): 48x48 grayscale faces found by web image search
and labelled quickly into seven classes; 28,709 training faces (disgust only 436) and 3,589
PublicTest faces (56 disgust). The shipped sample in `models/sample/` holds 50 PublicTest faces per
class; the full data set is not part of the repository.
"""

ETHICS = """\
- **Expressions are not emotions.** A face can show a category without the feeling, and the
  feeling without the face; culture, context, disability and personal style change how
  expressions look. The model labels appearance; it cannot infer inner states.
- **Consent.** Film and analyse people only with their informed consent, tell them what is
  measured, and keep no more than you need (`feredge run` stores no images unless `--record`).
- **Surveillance.** A small device does not make covert monitoring acceptable; expression
  analysis of workers, students or the public chills behaviour and may be unlawful (the EU AI
  Act restricts emotion recognition at work and in education).
- **Bias.** Accuracy across age, sex, skin tone and ethnicity was not measured and is likely
  uneven: evaluate on the population you serve before any use.
- **No decisions about people.** Do not use the output, alone or with other signals, to decide
  anything about a person.
"""


def card_text(run: Path, report: dict, config: dict, history: dict, params: int, macs: int,
              comparison: list[dict] | None, data: str, teachers: list[dict] | None = None,
              kept: list[str] = (), soup: dict | None = None, shipped_as: str = "edge") -> str:
    from feredge.edge.device import describe_host, host_record
    from feredge.models.architectures import ARCHITECTURES
    from feredge.models.run_dir import base_run

    seconds = history.get("seconds", [])
    base = base_run(config)
    commands = ([_train_command(base["config"])] if base else []) + [_train_command(config, base)]
    hours = stage_hours = sum(seconds) / 3600 + ((base["hours"] or 0.0) if base else 0.0)
    if soup:
        commands, extra_hours = _soup_commands(config, base, soup, commands)
        hours += extra_hours
    per_class = "\n".join(
        f"| {label} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for label, v in report["per_class"].items())
    lines = [
        f"# Model card: `{config.get('arch', 'model')}`", "",
        ("The default model of feredge" if shipped_as == "edge" else
         f"The `{shipped_as}` model of feredge's family (`--model {shipped_as}`, `--bundle {shipped_as}`)")
        + ": a facial-expression classifier for face crops "
        f"({', '.join(report['per_class'])}). {params:,} parameters, {macs / 1e6:.1f} M multiply-accumulates "
        f"per {_input_size(run)} face, **{100 * report['accuracy']:.2f} % accuracy and "
        f"{report['macro_f1']:.4f} macro-F1** "
        f"on the {report['num_samples']:,} FER-2013 PublicTest faces.", "",
        "## Intended use", "", INTENDED_USE,
        "## Out-of-scope uses", "", OUT_OF_SCOPE,
        "## Model", "",
        " ".join((ARCHITECTURES[config["arch"]].__doc__ or "").split())
        + f" Defined in `models/architectures.py` (`{config['arch']}`).", "",
        "## Training data", "",
        f"The `{config.get('train_split')}` split of `{config.get('data')}`; validation: "
        f"`{config.get('val')}`; nothing else.", "", DATA_TEXT,
        "## Preprocessing", "", _preprocessing_text(run, config), "",
        "## Training", "",
        "```bash", *commands, "```", "",
        *([_fine_tune_text(config, base, stage_hours), ""] if config.get("init_from") else []),
        *([_soup_text(soup, hours), ""] if soup else []),
        f"Recipe: {_optimizer_text(config)} (peak learning rate {config.get('lr')}, "
        f"{config.get('lr_schedule')} schedule, {config.get('warmup_epochs')} warm-up epoch{'' if config.get('warmup_epochs') == 1 else 's'}"
        + (f", decoupled weight decay {config['weight_decay']:g} on kernels only" if config.get("weight_decay") else "")
        + f"), cross-entropy with label smoothing "
        f"{config.get('label_smoothing')}, class weights `{config.get('class_weights')}`, batch "
        f"{config.get('batch_size')}, augmentation preset `{config.get('augment')}` (see models/augment.py), "
        f"equalisation `{config.get('equalize')}`, normalisation `{config.get('normalize')}`, seed "
        f"{config.get('seed')}. Trained {len(seconds)} epochs"
        + (f" ({statistics.median(seconds):.0f} s per epoch on 2 CPU cores, {sum(seconds) / 3600:.1f} h in all)"
           if seconds else "") + "; " + _selection_text(report)
        + (f" Soft targets: alpha {config.get('distill_alpha')}, temperature {config.get('distill_temperature')}."
           + (f" The teachers labelled {config['distill_views']} fixed augmented copies of every training image "
              f"as the student saw them (`--distill-views`), epoch e training on copy e mod "
              f"{config['distill_views']}." if config.get("distill_views") else "")
           + _teacher_text(teachers or [], hours, _base_sha(config) if base else None)
           if config.get("teachers") else ""),
        "",
        "![training curves](history.png)", "",
        "## Metrics", "",
        f"Keras (float32) on the {report['num_samples']:,} faces of the test split of `{data}`, measured on "
        f"{describe_host(host_record())}: accuracy {100 * report['accuracy']:.2f} %, macro-F1 "
        f"{report['macro_f1']:.4f}, weighted F1 {report['weighted_f1']:.4f}. Reproduce: `feredge eval "
        f"{'' if shipped_as == 'edge' else f'--model {shipped_as} '}--data {data}`.", "",
        "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|", per_class, "",
        "![confusion matrix](confusion.png)", "",
    ]
    if comparison:
        lines += comparison_section(comparison)
    for block in kept:
        lines += [block, ""]
    lines += ["## Known limitations", "", LIMITATIONS, "## Ethical considerations", "", ETHICS]
    return "\n".join(lines)


NORMALIZATION = {"unit": "x/255", "symmetric": "x/127.5-1", "zscore": "(x/255-mean)/std"}


def _input_size(run: Path) -> str:
    """The network's input as HxW (FER-2013 crops are 48x48; `mini_xception` takes them resized to 64x64)."""
    spec_file = Path(run) / "preprocess.json"
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    return f"{spec['height']}x{spec['width']}" if spec.get("height") else "48x48"


def _preprocessing_text(run: Path, config: dict) -> str:
    """The preprocessing spec in words, from the run's preprocess.json (else its config)."""
    spec_file = Path(run) / "preprocess.json"
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    size = f"{spec['height']}x{spec['width']}" if spec.get("height") else "the network's input size"
    colour = "RGB" if spec.get("channels") == 3 else "grayscale"
    normalize = spec.get("normalize") or config.get("normalize") or "unit"
    stats = (f" (mean {spec['mean']}, std {spec['std']})" if normalize == "zscore" and spec.get("mean") is not None
             else "")
    flip = spec.get("flip_average", config.get("flip_average"))
    return (f"One spec, `preprocess.json`, travels with the model into every bundle and is applied by "
            f"`edge/preprocess.py` in training, export, the runtime and the benchmarks: the face box from the "
            f"detector with margin {spec.get('margin', 0.0)}, {colour}, resized to {size}, histogram equalisation "
            f"`{spec.get('equalize') or config.get('equalize')}`, normalisation `{normalize}` "
            f"({NORMALIZATION.get(normalize, normalize)}){stats}; test-time flip averaging "
            f"{'on' if flip else 'off'}. Augmentation applies in training only.")


COMPARISON_HEADING = "## Comparison with the seed networks"


def comparison_section(rows: list[dict]) -> list[str]:
    """The card's comparison, one short table: the seeds in the papers' order (the order the project's issue
    lists them), then the latest record of each of our networks. Every record stays in comparison.json."""
    rank = {name: i for i, name in enumerate(COMPARED_SEEDS)}
    latest = {r["arch"]: r for r in rows}  # the last record of each network
    shown = sorted(latest.values(), key=lambda r: rank.get(r["arch"], len(rank)))  # stable: ours keep their order
    lines = [COMPARISON_HEADING, "",
             "Same training data and test split, Keras (float32) on 2-core x86_64 hosts "
             "(`feredge compare RUN... --data DATA`); MACs per 48x48 face:", "",
             "| network | accuracy | macro-F1 | weakest class (recall) | parameters | MACs |",
             "|---|---:|---:|---|---:|---:|"]
    for r in shown:
        weakest = min(r["recall"], key=r["recall"].get) if r["recall"] else None
        lines.append(f"| {_row_name(r)} | {100 * r['accuracy']:.2f} % | {r['macro_f1']:.4f} | "
                     + (f"{weakest} {100 * r['recall'][weakest]:.1f} %" if weakest else "-")
                     + f" | {r['parameters']:,} | {r['macs'] / 1e6:.1f} M |")
    lines.append("")
    missing = [name for name in COMPARED_SEEDS if name not in latest]
    if missing:
        lines += [f"Not in this table yet: {', '.join(f'`{m}`' for m in missing)}.", ""]
    if len(shown) < len(rows):
        lines += [f"All {len(rows)} records (earlier models, runs not shipped, recall per class, training time) "
                  "are kept in `comparison.json`; their story is in "
                  "[docs/experiments.md](../../docs/experiments.md).", ""]
    return lines


def _row_name(row: dict) -> str:
    """A row's network and the first clause of its note: `edge (SGD; shipped)`."""
    name, note = row.get("label") or row["arch"], (row.get("note") or "").split(";")[0].strip()
    if not note:
        return name
    return f"{name[:-1]}; {note})" if name.endswith(")") else f"{name} ({note})"


def replace_comparison(card: str, rows: list[dict]) -> str:
    """The card with its comparison section rewritten from `rows`, everything else as it was. The
    section ends at the next heading or hand-written block, so notes kept beside it survive."""
    section = "\n".join(comparison_section(rows)) + "\n"
    if COMPARISON_HEADING in card:
        before, rest = card.split(COMPARISON_HEADING, 1)
        ends = [i for i in (rest.find("\n## "), rest.find("\n" + HAND_WRITTEN[0])) if i >= 0]
        after = rest[min(ends) + 1:] if ends else ""
        return before + section + after
    anchor = "## Known limitations"
    if anchor not in card:
        raise ValueError(f"the card has neither {COMPARISON_HEADING!r} nor {anchor!r} to put the comparison before")
    before, after = card.split(anchor, 1)
    return before + section + anchor + after


def update_comparison(comparison_file: str | Path, out: Path = PRETRAINED_DIR) -> list[dict]:
    """Put new comparison records into the shipped card and comparison.json without re-shipping the
    model: for a seed network trained after the shipped model, whose own run folder is gone."""
    from feredge.models.compare import load_rows

    rows = load_rows(comparison_file)
    card_file = out / "MODEL_CARD.md"
    if not card_file.is_file():
        raise FileNotFoundError(f"{card_file}: no model card to update; ship a run first")
    text = replace_comparison(card_file.read_text(), rows)
    write_text_atomic(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
    write_text_atomic(card_file, text)
    return rows


def _selection_text(report: dict) -> str:
    if report.get("averaged_epochs"):
        return (f"the average of the weights of the last {report['averaged_epochs']} epochs is shipped "
                "(stochastic weight averaging, models/swa.py), so no epoch was picked by its PublicTest accuracy.")
    return (f"the epoch with the best PublicTest accuracy ({report.get('best_epoch', '?')}) is shipped, so the "
            "PublicTest figure below is slightly optimistic for unseen faces.")


def _fine_tune_text(config: dict, base: dict | None, hours: float) -> str:
    start = f"the `{base['config'].get('arch')}` run of the first command" if base else f"`{config['init_from']}`"
    return (f"The second stage starts from the weights of {start} and trains {config.get('epochs')} more epochs"
            + (f" at a constant learning rate of {config.get('lr')}" if config.get("lr_schedule") == "constant" else "")
            + (f", averaging the weights of the last {config['swa_epochs']}" if config.get("swa_epochs") else "")
            + "." + (f" The first stage took {base['hours']:.1f} h, both {hours:.1f} h on 2 CPU cores."
                     if base and base["hours"] else
                     " The first stage's history.json is not at hand: its hours are not counted below." if base else "")
            + " The recipe below is the second stage's.")


def _soup_commands(config: dict, base: dict | None, soup: dict, commands: list[str]) -> tuple[list[str], float]:
    """The commands of a weight-averaged model: each member run (differing in seed), then the average;
    and the hours of the members after the first, whose history is the card's own."""
    out = commands[-1].split(" --out ", 1)[1].split(" ", 1)[0]  # the last stage's command is the first member's
    outs, extra = [out], 0.0
    for i, member in enumerate(soup["members"][1:], 2):
        outs.append(f"{out}-{i}")
        line = _train_command({**config, "seed": member.get("seed")}, base)
        commands.append(line.replace(f" --out {out} ", f" --out {out}-{i} "))
        extra += member.get("hours") or 0.0
    commands.append(f"feredge average {' '.join(outs)} --out runs/{config.get('arch')}-average")
    return commands, extra


def _soup_text(soup: dict, hours: float) -> str:
    seeds = ", ".join(str(m.get("seed")) for m in soup["members"])
    return (f"The shipped weights are the mean of the weights of {len(soup['members'])} runs of that stage, "
            f"which differ only in their seed ({seeds}), with batch-norm statistics measured again on "
            f"{soup['batchnorm']['images']:,} augmented training images (`feredge average`, models/soup.py); "
            f"all runs together took {hours:.1f} h on 2 CPU cores. The recipe below is each run's.")


def _optimizer_text(config: dict) -> str:
    if config.get("optimizer", "adam") == "sgd":
        return f"SGD with Nesterov momentum {config.get('momentum', 0.9)}"
    return "Adam"


def _train_command(config: dict, base: dict | None = None) -> str:
    """The `feredge train` line that reproduces a run: every setting that differs from the default."""
    from feredge.models.train import TrainConfig

    defaults = TrainConfig(data="")
    out = f"runs/{config.get('arch')}" + ("-finetuned" if base else "")
    parts = ["feredge train", f"--data {config.get('data')}", f"--arch {config.get('arch')}", f"--out {out}"]
    for key, value in config.items():
        # "distribution" records how a strategy split the batch: derived, not a flag
        if key in ("data", "arch", "out", "distribution") or not hasattr(defaults, key) \
                or value == getattr(defaults, key):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "init_from" and base:
            parts.append(f"{flag} runs/{base['config'].get('arch')}")
        elif key == "teachers":
            parts += [f"--teacher {teacher}" for teacher in value or ()]
        elif isinstance(value, bool):
            parts.append(flag if value else "")
        elif value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(part for part in parts if part)


def _base_sha(config: dict) -> str | None:
    from feredge.edge.bundle import sha256_file

    try:
        model = git_models.resolve(config["init_from"]) / "model.keras"
    except (OSError, ValueError, RuntimeError):
        return None
    return sha256_file(model) if model.is_file() else None


def _teacher_text(teachers: list[dict], hours: float, base_sha: str | None = None) -> str:
    """Who taught the model, identified by file hash (a teacher folder such as models/pretrained may
    since hold another model), and what the whole lineage cost where the teachers' history is known.
    A teacher that is also the run's first stage is in `hours` already and is not counted again."""
    named = []
    for t in teachers:
        facts = [f"model sha256 {t['model_sha256'][:12]}"]
        if t.get("test_accuracy") is not None:
            facts.append(f"{100 * t['test_accuracy']:.2f} % on PublicTest")
        if t.get("training_hours"):
            facts.append(f"{t['training_hours']:.1f} h of training")
        named.append(f"`{t.get('arch') or 'model'}` from `{t['path']}` ({', '.join(facts)})")
    others = [t for t in teachers if t["model_sha256"] != base_sha]
    known = [t["training_hours"] for t in others if t.get("training_hours")]
    total = (f" With the teachers' own training, {hours + sum(known):.1f} h in all"
             + (", the first stage counted once." if len(others) < len(teachers) else ".")
             if len(known) == len(others) else
             " The teachers' own training hours are not all on record, so they are not added here.")
    return f" Distilled from {', '.join(named)}." + total


def _teachers(run: Path, config: dict) -> list[dict]:
    from feredge.models.distill import TEACHERS_FILE, describe_teacher

    recorded = run / TEACHERS_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text())
    return [describe_teacher(t) for t in config.get("teachers") or ()]  # runs from before teachers.json


HAND_WRITTEN = ("<!-- hand-written -->", "<!-- /hand-written -->")


def hand_written_sections(card: str) -> list[str]:
    """Blocks of an existing card between the hand-written markers, which re-shipping keeps."""
    start, end = HAND_WRITTEN
    blocks, rest = [], card
    while start in rest and end in rest.split(start, 1)[1]:
        inside, rest = rest.split(start, 1)[1].split(end, 1)
        blocks.append(start + inside + end)
    return blocks


RECORD_FILES = ("config.json", "history.json", "teachers.json", "soup.json")  # small; keep the shipped folder a run record


def _palette_png(path: Path) -> None:
    """Re-save a plot with a 256-colour palette: a third of the bytes, no visible change, and the
    shipped folder stays under 10 MB."""
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib; without it the plots were not drawn either
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256)
    tmp = path.with_name(f".{path.name}.tmp")
    small.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def ship(run: str | Path, data: str, comparison_file: str | None = None, out: Path = PRETRAINED_DIR) -> dict:
    from feredge.models.architectures import count_macs
    from feredge.models.compare import load_rows
    from feredge.models.evaluate import evaluate_path
    from feredge.models.run_dir import run_record
    from feredge.models.model_io import load_keras_model

    run = Path(run)
    report = evaluate_path(run, data, "test", out_dir=run / "test-eval")
    record = run_record(run)
    config, history, state = record["config"], record["history"], record["state"]
    if state:
        report["best_epoch"] = state.get("best_epoch")
        if state.get("swa_averaged"):
            report["averaged_epochs"] = state["swa_averaged"]
    model = load_keras_model(run / "model.keras")
    soup = json.loads((run / "soup.json").read_text()) if (run / "soup.json").is_file() else None
    comparison = load_rows(comparison_file) if comparison_file else None
    teachers = _teachers(run, config)  # before `out` is overwritten: the teacher may be the model shipped there
    old_card = out / "MODEL_CARD.md"
    kept = hand_written_sections(old_card.read_text()) if old_card.is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "preprocess.json", "labels.json", "history.png"):
        shutil.copy2(run / name, out / name)
    for name in RECORD_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    if teachers:
        write_text_atomic(out / "teachers.json", json.dumps(teachers, indent=2) + "\n")
    # history.json beside it holds the same curves; keep the shipped folder small
    write_text_atomic(out / "state.json", json.dumps({k: v for k, v in state.items() if k != "history"}, indent=2) + "\n")
    shutil.copy2(run / "test-eval" / "confusion.png", out / "confusion.png")
    for name in ("confusion.png", "history.png"):
        _palette_png(out / name)
    write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    if comparison:
        write_text_atomic(out / "comparison.json", json.dumps(comparison, indent=2) + "\n")
    shipped_as = next((name for name, folder in SHIPPED_RUNS.items() if folder.resolve() == out.resolve()), "edge")
    text = card_text(run, report, config, history, model.count_params(), count_macs(model), comparison, data,
                     teachers, kept, soup, shipped_as)
    write_text_atomic(out / "MODEL_CARD.md", text)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m feredge.models.model_card", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="the run directory to ship")
    p.add_argument("--data", help="FER-2013 with a test split (folder or CSV); needed to ship a run")
    p.add_argument("--compare", help="records written by 'feredge compare ... --out FILE' (its .json)")
    p.add_argument("--out", default=str(PRETRAINED_DIR), help="where the shipped model lives")
    p.add_argument("--comparison-only", action="store_true",
                   help="ship nothing: rewrite only the card's comparison section and comparison.json from --compare")
    args = p.parse_args(argv)
    if args.comparison_only:
        if not args.compare or args.run:
            p.error("--comparison-only takes --compare FILE and no run")
        try:
            rows = update_comparison(args.compare, Path(args.out))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.out}: comparison of {len(rows)} rows written into MODEL_CARD.md and comparison.json")
        return 0
    if not args.run or not args.data:
        p.error("shipping needs a run directory and --data")
    report = ship(args.run, args.data, args.compare, Path(args.out))
    print(f"shipped {args.run} to {args.out}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
