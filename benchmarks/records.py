"""The benchmark's row: one artifact at one thread count on one device, as bench.json holds it.

The harness writes rows with `to_dict`; the report, the int8 gate, the recommendation and the
merge of several devices read them back with `from_dict`, so a field is named in one place.
"""
from __future__ import annotations

import dataclasses

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "runs", "fps", "noisy")


@dataclasses.dataclass
class BenchRecord:
    device: dict  # machine, cpu, isa, system, board, cores, hostname
    artifact: str
    format: str
    precision: str
    threads: int | None
    batch: int
    size_bytes: int
    status: str = "ok"  # "ok" or "error: ..."
    pruning: dict | None = None
    flip_average: bool = False
    # measured by the worker (absent when it failed)
    runtime: str | None = None
    precision_ran: str | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    model_rss_mb: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    runs: int | None = None
    fps: float | None = None
    noisy: bool | None = None
    # on labelled faces (the first thread count of each artifact)
    accuracy: float | None = None
    macro_f1: float | None = None
    agreement: float | None = None  # top-1 agreement with the reference (Keras, else an fp32 artifact)
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None  # reference_accuracy - accuracy
    flags: list = dataclasses.field(default_factory=list)  # the int8 gate's remarks
    device_label: str | None = None  # set when several devices' results are merged

    ALWAYS = ("device", "artifact", "format", "precision", "pruning", "threads", "batch", "size_bytes",
              "flip_average", "status")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict) -> "BenchRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        """The row as bench.json holds it: what was not measured is left out, not written as null."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.ALWAYS or (value is not None and not (f.name == "flags" and value is None)):
                out[f.name] = value
        return out


def as_records(rows) -> list[BenchRecord]:
    """Rows from bench.json (dicts) or the harness (records), as records."""
    return [row if isinstance(row, BenchRecord) else BenchRecord.from_dict(row) for row in rows]
