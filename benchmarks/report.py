"""Benchmark results as a readable table, JSON, CSV, Markdown and PNG plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from feredge.benchmarks.records import BenchRecord, as_records
from feredge.edge.fileio import write_text_atomic
from feredge.evaluation.plots import _save_png

# (header, record key, format) for the latency/accuracy table.
COLUMNS = [
    ("artifact", "artifact", "{}"),
    ("status", "status", "{}"),
    ("size KB", "size_bytes", "{:.0f}"),
    ("thr", "threads", "{}"),
    ("ran", "precision_ran", "{}"),
    ("load ms", "load_ms", "{:.1f}"),
    ("1st ms", "first_inference_ms", "{:.2f}"),
    ("p50 ms", "p50_ms", "{:.3f}"),
    ("p90 ms", "p90_ms", "{:.3f}"),
    ("p99 ms", "p99_ms", "{:.3f}"),
    ("FPS", "fps", "{:.0f}"),
    ("peak MB", "peak_rss_mb", "{:.0f}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("drop pts", "accuracy_drop", "{:+.2f}"),
    ("agree", "agreement", "{:.2%}"),
]


def _cell(record: BenchRecord, key: str, fmt: str) -> str:
    value = getattr(record, key)
    if value is None:
        return "-"
    if key == "size_bytes":
        value = value / 1024
    elif key == "accuracy_drop":
        value = 100 * value
    elif key == "status":
        value = "ok" if value == "ok" else "error"
    return fmt.format(value)


def table_rows(records) -> tuple[list[str], list[list[str]]]:
    records = as_records(records)
    columns = ([("device", "device_label", "{}")] if any(r.device_label for r in records) else []) + COLUMNS
    headers = [h for h, _, _ in columns] + ["flags"]
    rows = [[_cell(r, key, fmt) for _, key, fmt in columns] + ["; ".join(r.flags) or "-"] for r in records]
    return headers, rows


def format_table(records) -> str:
    records = as_records(records)
    headers, rows = table_rows(records)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    left = {i for i, h in enumerate(headers) if h in ("device", "artifact", "status", "ran", "flags")}
    line = lambda cells: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows]
    errors = [f"{r.artifact} (threads {r.threads}): {r.status}" for r in records if not r.ok]
    return "\n".join(out + errors)


def format_markdown_table(records) -> str:
    headers, rows = table_rows(records)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def to_csv(records) -> str:
    flat = []
    for r in as_records(records):
        row = {k: v for k, v in r.to_dict().items() if k not in ("device", "flags", "pruning")}
        row.update({f"device_{k}": v for k, v in r.device.items()})
        row["pruning"] = json.dumps(r.pruning) if r.pruning else ""
        row["flags"] = "; ".join(r.flags)
        flat.append(row)
    keys = list(dict.fromkeys(k for row in flat for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def device_lines(device: dict) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in device.get("packages", {}).items())
    isa = ", ".join(device.get("isa") or []) or ("not recorded" if "isa" not in device else "none")
    return [f"- CPU: {device.get('cpu')} ({device.get('machine')}; int8-relevant ISA: {isa}), {device.get('cores')} cores "
            f"({device.get('usable_cores')} usable)",
            f"- board: {device.get('board') or 'not a Raspberry Pi or Jetson'}",
            f"- system: {device.get('os')}, Python {device.get('python')}",
            f"- governor: {device.get('governor') or 'not readable'}; frequency: "
            f"{device.get('frequency_mhz') or 'not readable'} MHz",
            f"- packages: {packages}"]


def plot_latency_accuracy(records, path: str | Path, title: str = "latency against accuracy") -> None:
    from feredge.evaluation.plots import _new_figure

    points = [r for r in as_records(records) if r.ok and r.accuracy is not None]
    fig = _new_figure((8.5, 5.5))
    ax = fig.add_subplot()
    colours = {"tflite": "tab:blue", "onnx": "tab:orange", "openvino": "tab:green"}
    markers = {"fp32": "o", "fp16": "s", "dynamic": "D", "int8": "^"}
    seen = set()
    for i, r in enumerate(sorted(points, key=lambda r: (r.p50_ms, r.accuracy))):
        legend = f"{r.format} {r.precision}"
        ax.scatter(r.p50_ms, 100 * r.accuracy, color=colours.get(r.format, "tab:gray"),
                   marker=markers.get(r.precision, "x"), s=45 + 25 * ((r.threads or 1) - 1),
                   label=None if legend in seen else legend, alpha=0.85)
        seen.add(legend)
        text = f"t{r.threads}" + (f" {r.device_label}" if r.device_label else "")
        ax.annotate(text, (r.p50_ms, 100 * r.accuracy), fontsize=7, textcoords="offset points",
                    xytext=(5, 6 if i % 2 else -10))
    finish_latency_accuracy(fig, ax, path, "p50 latency per inference, ms (log scale; t = threads)", title)


def finish_latency_accuracy(fig, ax, path, xlabel: str, title: str, title_size: float | None = None) -> None:
    """Log latency axis with plain numbers, accuracy in %, legend outside; saved as PNG."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _: f"{x:g}")  # 0.5, 1, 2: one style and size for decades and between
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=title_size)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save_png(fig, path)


def plot_stage_bars(e2e_rows: list[dict], path: str | Path, title: str = "end-to-end time per frame by stage") -> None:
    from feredge.evaluation.plots import _new_figure

    stages = list(dict.fromkeys(s for row in e2e_rows for s in row["stage_ms"]))
    labels = [row["label"] for row in e2e_rows]
    fig = _new_figure((max(6, 1.2 * len(labels) + 2), 5))
    ax = fig.add_subplot()
    bottom = [0.0] * len(labels)
    for stage in stages:
        values = [row["stage_ms"].get(stage, 0.0) for row in e2e_rows]
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, row in enumerate(e2e_rows):
        ax.annotate(f"{row['fps']:.1f} FPS", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per frame (mean)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for tick in ax.get_xticklabels():
        tick.set_rotation(30)
        tick.set_ha("right")
        tick.set_fontsize(8)
    _save_png(fig, path)


def write_reports(result: dict, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """JSON, CSV, Markdown and plots into out_dir; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "md": out / f"{stem}.md"}
    records = as_records(result["records"])
    write_text_atomic(written["json"], json.dumps({**result, "records": [r.to_dict() for r in records]}, indent=2)
                      + "\n")
    write_text_atomic(written["csv"], to_csv(records))
    try:
        if any(r.accuracy is not None for r in records):
            plot_latency_accuracy(result["records"], out / f"{stem}_latency_accuracy.png")
            written["latency_plot"] = out / f"{stem}_latency_accuracy.png"
        if result.get("e2e"):
            plot_stage_bars(result["e2e"], out / f"{stem}_stages.png")
            written["stage_plot"] = out / f"{stem}_stages.png"
    except ImportError:
        pass  # matplotlib is optional on a device; the tables carry the same numbers
    write_text_atomic(written["md"], markdown_report(result, {k: v.name for k, v in written.items()}))
    return written


def markdown_report(result: dict, files: dict) -> str:
    lines = [f"# feredge benchmark: {result.get('model')}", "",
             f"Bundle `{result.get('bundle')}`, {result.get('created')}.", "", "## Device", ""]
    lines += device_lines(result["device"])
    if result.get("data"):
        lines += ["", f"Accuracy on {result['data']} ({result.get('samples')} faces); reference: "
                      f"{result.get('reference') or 'none'} ({_pct(result.get('reference_accuracy'))})."]
    lines += ["", "## Latency and accuracy per artifact", "", format_markdown_table(result["records"]), ""]
    rec = result.get("recommendation")
    if rec:
        lines += [f"**Recommended on this device:** `{rec['artifact']}` with {rec['threads']} thread(s): "
                  f"{rec['p50_ms']:.3f} ms p50, accuracy {_pct(rec.get('accuracy'))}, drop "
                  f"{_pts(rec.get('accuracy_drop'))} (budget {rec['max_drop']:g} points).", ""]
    if "latency_plot" in files:
        lines += [f"![latency against accuracy]({files['latency_plot']})", ""]
    if result.get("e2e"):
        lines += ["## End to end", "", format_e2e_markdown(result["e2e"]), ""]
        if "stage_plot" in files:
            lines += [f"![stages]({files['stage_plot']})", ""]
    if result.get("overhead"):
        lines += ["## Harness overhead", ""] + [f"- {line}" for line in result["overhead"]["lines"]] + [""]
    return "\n".join(lines)


def format_e2e_markdown(rows: list[dict]) -> str:
    stages = list(dict.fromkeys(s for row in rows for s in row["stage_ms"]))
    out = ["| run | frames | FPS | " + " | ".join(f"{s} ms" for s in stages)
           + " | first result s | peak MB | detection rate | label accuracy |",
           "|---|---:|---:|" + "---:|" * len(stages) + "---:|---:|---:|---:|"]
    for row in rows:
        if row.get("error"):
            out.append(f"| {row['label']} | error: {row['error']} |")
            continue
        out.append(f"| {row['label']} | {row['frames']} | {row['fps']:.1f} | "
                   + " | ".join(f"{row['stage_ms'].get(s, 0.0):.2f}" for s in stages)
                   + f" | {_num(row.get('first_result_s'), '.2f')} | {_num(row.get('peak_rss_mb'), '.0f')}"
                   + f" | {_pct(row.get('detection_rate'))} | {_pct(row.get('label_accuracy'))} |")
    return "\n".join(out)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _pts(value) -> str:
    return "-" if value is None else f"{100 * value:+.2f} points"
