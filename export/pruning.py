"""Pruning before export: magnitude (sparse weights) and structured (whole filters removed).

Magnitude pruning (tensorflow-model-optimization) zeroes the smallest weights while fine-tuning;
the dense kernels keep their shape, so the gain is in compressed size (gzip of the file), not
in speed. Structured pruning removes whole filters (and hidden Dense units), rebuilds a smaller
dense tf-keras model with the surviving weights and fine-tunes it: fewer parameters and MACs,
so every runtime really does less work.

Structured pruning works on channel groups: layers whose outputs meet in an Add (a residual
path) share one group and lose the same channels, ranked by the summed, per-layer normalised
L1 norms of their filters. BatchNormalization, depthwise convolutions and pooling follow the
channels they receive; a Flatten's following Dense loses the matching rows. Channels that reach
the model input or output, a Concatenate, a Reshape or another layer whose channel meaning we
cannot follow are left alone, and the report says so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys

import numpy as np

log = logging.getLogger("feredge.export")

METHODS = ("magnitude", "structured")


@dataclasses.dataclass(frozen=True)
class PruneRequest:
    method: str  # magnitude | structured
    amount: float  # target sparsity or fraction of filters removed

    @property
    def tag(self) -> str:
        pct = f"{self.amount * 100:g}".replace(".", "p")
        return f"pruned{pct}" if self.method == "magnitude" else f"structured{pct}"


def parse_prune(specs) -> list[PruneRequest]:
    """'magnitude:0.5', 'structured:0.25', comma lists, or several of them."""
    if specs is None:
        return []
    if isinstance(specs, (str, PruneRequest)):
        specs = [specs]
    requests = []
    for spec in specs:
        if isinstance(spec, PruneRequest):
            requests.append(spec)
            continue
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            method, _, amount = part.partition(":")
            method = method.strip().lower()
            if method not in METHODS:
                raise ValueError(f"--prune {part!r}: method must be magnitude or structured (e.g. magnitude:0.5)")
            try:
                value = float(amount)
            except ValueError:
                raise ValueError(f"--prune {part!r}: amount must be a number between 0 and 1 "
                                 f"(e.g. {method}:0.5)") from None
            if not 0 < value < 1:
                raise ValueError(f"--prune {part!r}: amount must be between 0 and 1 (exclusive)")
            requests.append(PruneRequest(method, value))
    tags = [r.tag for r in requests]
    if len(set(tags)) != len(tags):
        raise ValueError(f"--prune repeats a request: {', '.join(tags)}")
    return requests


# --- fine-tuning -----------------------------------------------------------------------------

def _batches(images: np.ndarray, targets: np.ndarray, spec, batch_size: int, epochs: int, seed: int,
             augment=None):
    from feredge.edge.preprocess import preprocess
    from feredge.models.augment import augment_batch

    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(targets))
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start:start + batch_size])
            batch = images[idx] if augment is None else augment_batch(images[idx], augment, rng)
            yield preprocess(batch, spec), targets[idx]


TEACHER_ALPHA = 0.5  # half the true label, half the unpruned model's distribution, as the shipped model trained


def fine_tune(model, train, spec, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0,
              callbacks=(), verbose: int = 0, teacher=None) -> None:
    """Fine-tuning on uint8 faces with the model's own preprocessing; plain (no augmentation) unless
    a `teacher` is given. With one (the unpruned model) the targets mix the true label with the
    teacher's flip-averaged distribution and the faces get the `standard` augmentation (flip,
    small rotation, zoom and shift). Plain fine-tuning lost 5.5 PublicTest points on `edge` with a
    quarter of its filters removed (docs/experiments.md)."""
    from feredge.models.augment import PRESETS
    from feredge.models.distill import distilled_targets
    from feredge.models.tf_env import generator_dataset, keras

    keras.utils.set_random_seed(seed)
    classes = int(model.output_shape[-1])
    targets = np.eye(classes, dtype=np.float32)[train.y]
    augment = None
    if teacher is not None:
        from feredge.evaluation.predict import predict

        log.info("fine-tuning against the unpruned model: labelling %d faces", len(train))
        soft = predict(teacher, train.images, spec.replace(flip_average=True))
        targets = distilled_targets(targets, [soft], TEACHER_ALPHA, 1.0)
        augment = PRESETS["standard"]
    steps = math.ceil(len(train) / batch_size)
    data = generator_dataset(lambda: _batches(train.images, targets, spec, batch_size, epochs, seed, augment),
                             spec.input_shape, (classes,))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
    with contextlib.redirect_stdout(sys.stderr):  # Keras prints epoch lines on stdout; ours is the summary
        model.fit(data, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks), verbose=verbose)


def steps_per_epoch(train, batch_size: int = 64) -> int:
    return math.ceil(len(train) / batch_size)


def copy_model(model):
    """An independent copy, so pruning and fine-tuning a variant never touch the source's weights."""
    from feredge.models.tf_env import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


# --- magnitude pruning -----------------------------------------------------------------------

def magnitude_prune(model, train, spec, sparsity: float, *, epochs: int, lr: float = 1e-4,
                    batch_size: int = 64, seed: int = 0, verbose: int = 0):
    """(stripped model with zeroed weights, info). Raises if the asked sparsity was not reached."""
    from feredge.models.tf_env import keras  # before tfmot: it must see TF_USE_LEGACY_KERAS

    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    total = epochs * steps_per_epoch(train, batch_size)
    if total < 2:
        raise ValueError(f"too little fine-tuning data for pruning: {len(train)} images give {total} step(s)")
    # tfmot only prunes on steps where (step - begin) % frequency == 0 and step <= end_step, and
    # reaches the final sparsity only on end_step itself: make end_step a multiple of frequency
    # inside the run (PolynomialDecay's default frequency of 100 silently gives 0 % on short runs).
    end = max(1, min(total - 1, int(total * 0.7)))
    frequency = max(1, min(100, end // 8))
    end = max(frequency, end - end % frequency)
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity,
                                                    begin_step=0, end_step=end, frequency=frequency)
    keras.utils.set_random_seed(seed)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(copy_model(model), pruning_schedule=schedule)
    pruned_weights = {}
    for layer in wrapped.layers:
        if isinstance(layer, PruneLowMagnitude) and layer.layer.get_prunable_weights():
            pruned_weights[layer.layer.name] = [w.name.split("/")[-1].split(":")[0]
                                                for w in layer.layer.get_prunable_weights()]
    fine_tune(wrapped, train, spec, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=verbose)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    zeros = size = 0
    for layer in stripped.layers:
        for attr in pruned_weights.get(layer.name, ()):
            w = np.asarray(getattr(layer, attr))
            zeros += int(np.sum(w == 0))
            size += w.size
    measured = zeros / size if size else 0.0
    if measured < sparsity - 0.01:
        raise RuntimeError(f"magnitude pruning reached {measured:.1%} sparsity, not the asked {sparsity:.0%} "
                           f"(schedule end_step {end}, frequency {frequency}, {total} steps)")
    info = {"method": "magnitude", "sparsity": sparsity, "measured_sparsity": round(measured, 6),
            "pruned_layers": sorted(pruned_weights), "pruned_weights": size, "finetune_epochs": epochs,
            "finetune_lr": lr, "schedule": {"kind": "PolynomialDecay", "end_step": end, "frequency": frequency,
                                            "steps": total}}
    return stripped, info


# --- structured pruning ----------------------------------------------------------------------

PRODUCERS = ("Conv2D", "SeparableConv2D", "Dense")
PASSTHROUGH = frozenset({
    "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Activation", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "ActivityRegularization", "MaxPooling2D", "AveragePooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
})
MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})


@dataclasses.dataclass
class _Space:
    """A set of channels that must be pruned together."""

    size: int
    frozen: str | None = None  # why it must keep all channels
    producers: list = dataclasses.field(default_factory=list)  # layer names that create these channels
    members: list = dataclasses.field(default_factory=list)  # every layer whose output lives here


class _Graph:
    def __init__(self):
        self.parent: list[int] = []
        self.spaces: list[_Space] = []

    def new(self, size: int, frozen: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(_Space(size, frozen))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def space(self, i: int) -> _Space:
        return self.spaces[self.find(i)]

    def freeze(self, i: int, why: str) -> None:
        s = self.space(i)
        s.frozen = s.frozen or why

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            sa, sb = self.spaces[ra], self.spaces[rb]
            self.parent[rb] = ra
            sa.frozen = sa.frozen or sb.frozen
            sa.producers += sb.producers
            sa.members += sb.members
        return ra


def _topology(model) -> tuple[list, dict[str, list[str]], list[str]]:
    """(layers in order, layer name -> names of its input layers, output layer names)."""
    names = {layer.name for layer in model.layers}
    kind = type(model).__name__
    if kind == "Sequential":
        layers = [layer for layer in model.layers]
        inputs, previous = {}, "__input__"
        for layer in layers:
            inputs[layer.name] = [previous]
            previous = layer.name
        return layers, inputs, [previous]
    if kind != "Functional":
        raise ValueError(f"structured pruning needs a Sequential or functional model, not {kind}")
    config = model.get_config()
    inputs = {}
    for entry in config["layers"]:
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise ValueError(f"structured pruning: layer {entry['name']!r} is used more than once (shared "
                             f"layers are not supported)")
        if nodes:
            node = nodes[0]
            args = node["args"] if isinstance(node, dict) else node
            inputs[entry["name"]] = [a[0] for a in args if isinstance(a, (list, tuple)) and a and a[0] in names]
        else:
            inputs[entry["name"]] = []
    outputs = [o[0] for o in config["output_layers"]]
    return list(model.layers), inputs, outputs


def analyse(model) -> tuple[_Graph, dict[str, tuple[int, int]]]:
    """Channel spaces: layer name -> (space id of its output, positions per channel)."""
    graph = _Graph()
    out: dict[str, tuple[int, int]] = {}
    layers, inputs, outputs = _topology(model)
    out["__input__"] = (graph.new(int(model.input_shape[-1]), "model input"), 1)
    for layer in layers:
        kind, name = type(layer).__name__, layer.name
        if kind == "InputLayer":
            out[name] = (graph.new(int(layer.output_shape[0][-1] if isinstance(layer.output_shape, list)
                                       else layer.output_shape[-1]), "model input"), 1)
            continue
        ins = [out[i] for i in inputs[name]]
        if kind in ("Sequential", "Functional"):
            raise ValueError(f"structured pruning: layer {name!r} is a nested model; flatten it first")
        channels = int(layer.output_shape[-1])
        if kind == "Conv2D" and layer.groups == 1 or kind == "SeparableConv2D" or kind == "Dense":
            space = graph.new(channels)
            graph.space(space).producers.append(name)
            graph.space(space).members.append(name)
            out[name] = (space, 1)
        elif kind == "DepthwiseConv2D" and layer.depth_multiplier == 1 and ins[0][1] == 1:
            graph.space(ins[0][0]).members.append(name)
            out[name] = ins[0]
        elif kind in PASSTHROUGH and len(ins) == 1 and (kind != "BatchNormalization" or
                                                       (_bn_last_axis(layer) and ins[0][1] == 1)):
            graph.space(ins[0][0]).members.append(name)
            out[name] = ins[0]
        elif kind == "Flatten" and len(ins) == 1 and ins[0][1] == 1:
            positions = int(np.prod(layer.input_shape[1:-1])) if len(layer.input_shape) > 2 else 1
            out[name] = (ins[0][0], positions)
        elif kind in MERGES and len({p for _, p in ins}) == 1 and \
                len({tuple(s) for s in layer.input_shape}) == 1:
            space = ins[0][0]
            for other, _ in ins[1:]:
                space = graph.union(space, other)
            out[name] = (space, ins[0][1])
        else:
            for space, _ in ins:
                graph.freeze(space, f"feeds {name} ({kind})")
            out[name] = (graph.new(channels, f"made by {name} ({kind})"), 1)
    for name in outputs:
        graph.freeze(out[name][0], "model output")
    return graph, out


def _bn_last_axis(layer) -> bool:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return len(axis) == 1 and axis[0] in (-1, len(layer.input_shape) - 1)


def _filter_l1(layer) -> np.ndarray:
    kind = type(layer).__name__
    if kind == "SeparableConv2D":
        kernel = layer.pointwise_kernel.numpy()
    else:
        kernel = layer.kernel.numpy()
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def choose_channels(model, fraction: float) -> tuple[_Graph, dict[str, tuple[int, int]], dict[int, np.ndarray], list[str]]:
    """Per prunable group the channel indices kept (lowest summed normalised L1 removed)."""
    graph, out = analyse(model)
    by_name = {layer.name: layer for layer in model.layers}
    keep: dict[int, np.ndarray] = {}
    notes = []
    roots = sorted({graph.find(i) for i in range(len(graph.parent))})
    for root in roots:
        space = graph.spaces[root]
        if not space.producers:
            continue
        label = "+".join(space.producers)
        if space.frozen:
            notes.append(f"kept all {space.size} channels of {label}: {space.frozen}")
            continue
        score = np.zeros(space.size)
        for name in space.producers:
            l1 = _filter_l1(by_name[name])
            score += l1 / max(float(l1.mean()), 1e-12)
        remove = int(math.floor(fraction * space.size))
        remove = min(remove, space.size - 1)
        kept = np.sort(np.argsort(-score, kind="stable")[:space.size - remove])
        keep[root] = kept
        shared = " (one residual group, pruned consistently)" if len(space.producers) > 1 else ""
        notes.append(f"{label}: {space.size} -> {len(kept)} channels{shared}")
    return graph, out, keep, notes


def structured_prune(model, fraction: float):
    """(smaller dense model with the surviving weights, notes). No fine-tuning here."""
    from feredge.models.tf_env import keras

    graph, out, keep, notes = choose_channels(model, fraction)
    layers, inputs, _ = _topology(model)

    def kept(space_id: int, size: int) -> np.ndarray:
        return keep.get(graph.find(space_id), np.arange(size))

    config = model.get_config()
    entries = config["layers"]
    width = {}
    for layer in layers:
        kind = type(layer).__name__
        if kind in PRODUCERS and layer.name in out:
            root = graph.find(out[layer.name][0])
            if root in keep:
                width[layer.name] = len(keep[root])
    for entry in entries:
        name = entry["config"].get("name")
        if name in width:
            key = "units" if entry["class_name"] == "Dense" else "filters"
            entry["config"][key] = width[name]
    new = type(model).from_config(config) if type(model).__name__ == "Sequential" else \
        keras.Model.from_config(config)
    new_layers = {layer.name: layer for layer in new.layers}

    for layer in layers:
        weights = layer.get_weights()
        if not weights or type(layer).__name__ == "InputLayer":
            continue
        kind = type(layer).__name__
        src = [out[i] for i in inputs[layer.name]]
        in_space, positions = src[0] if src else (None, 1)
        cin = int(layer.input_shape[-1]) if not isinstance(layer.input_shape, list) else None
        in_keep = kept(in_space, cin // positions if positions > 1 else cin) if cin is not None else None
        out_keep = kept(out[layer.name][0], int(layer.output_shape[-1]))
        named = dict(zip([w.name.split("/")[-1].split(":")[0] for w in layer.weights], weights))
        if kind == "Conv2D":
            new_w = [named["kernel"][:, :, in_keep][..., out_keep]] + ([named["bias"][out_keep]] if "bias" in named else [])
        elif kind == "SeparableConv2D":
            dm = layer.depth_multiplier
            rows = (in_keep[:, None] * dm + np.arange(dm)[None, :]).ravel()
            new_w = [named["depthwise_kernel"][:, :, in_keep], named["pointwise_kernel"][:, :, rows][..., out_keep]]
            new_w += [named["bias"][out_keep]] if "bias" in named else []
        elif kind == "Dense":
            channels = cin // positions
            rows = (np.arange(positions)[:, None] * channels + in_keep[None, :]).ravel() if positions > 1 else in_keep
            new_w = [named["kernel"][rows][:, out_keep]] + ([named["bias"][out_keep]] if "bias" in named else [])
        elif kind == "DepthwiseConv2D" and graph.find(out[layer.name][0]) == graph.find(in_space):
            new_w = [named["depthwise_kernel"][:, :, out_keep]] + ([named["bias"][out_keep]] if "bias" in named else [])
        elif kind == "BatchNormalization":
            new_w = [w[out_keep] for w in weights]
        else:
            new_w = weights  # a layer on frozen channels keeps its weights as they are
        new_layers[layer.name].set_weights(new_w)
    return new, notes
