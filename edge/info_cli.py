"""`feredge info`: this device, the inference runtimes installed, what its OpenCV and cameras can do,
and the shipped models with the artifact `feredge run` would pick for each here."""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def gather() -> dict:
    from feredge.edge.backends import installed_formats
    from feredge.edge.device import camera_facts, device_facts, opencv_facts, runtime_facts

    return {"device": device_facts(), "formats": installed_formats(), "runtimes": runtime_facts(),
            "opencv": opencv_facts(), "cameras": camera_facts(), "models": shipped_models()}


def shipped_models() -> list[dict]:
    """Each shipped bundle by name, read from its manifest only (no model file is opened): size,
    accuracy as verified at export, and what `run --backend auto` would pick on this device."""
    from feredge.edge import paths
    from feredge.edge.bundle import Bundle, BundleError
    from feredge.edge.choose import choose

    models = []
    for name in paths.SHIPPED_RUNS:
        root = paths.shipped_bundle(name)
        entry = {"name": name, "default": name == paths.DEFAULT_NAME, "bundle": str(root)}
        try:
            bundle = Bundle.load(root)
            model, data = bundle.manifest.get("model") or {}, bundle.manifest.get("verification_data") or {}
            entry.update(parameters=model.get("parameters"), macs=model.get("macs"),
                         accuracy=data.get("keras_accuracy"), faces=data.get("labelled"),
                         data=Path(data["source"]).name if data.get("source") else None,
                         artifacts=[a.id for a in bundle.artifacts])
            entry["run_picks"] = choose(bundle).artifact.id
        except (BundleError, ValueError, OSError) as exc:  # a missing or broken bundle is reported, not fatal
            entry["problem"] = str(exc)
        models.append(entry)
    return models


def _yes(value) -> str:
    return "yes" if value else "no"


def format_info(info: dict) -> str:
    d, cv, cams = info["device"], info["opencv"], info["cameras"]
    lines = [
        f"device     {d['board'] or d['machine']}",
        f"cpu        {d['cpu']} ({d['machine']}), {d['cores']} cores ({d['usable_cores']} usable)",
        f"os         {d['os']}; {d['system']}",
        f"python     {d['python']}",
        "runtimes",
    ]
    if not info["runtimes"]:
        lines.append("  none: pip install \"feredge[tflite]\" (or [onnx], [openvino])")
    for name, entry in info["runtimes"].items():
        extra = ""
        if "providers" in entry:
            extra = f"; providers: {', '.join(entry['providers'])}"
        if "devices" in entry:
            extra = f"; devices: {', '.join(entry['devices'])}"
        if "error" in entry:
            extra += f"; broken: {entry['error']}"
        lines.append(f"  {name:<15}{entry.get('version') or '?'}{extra}")
    runs = ", ".join(f"{fmt} (via {pkg})" for fmt, pkg in info["formats"].items()) or "nothing"
    lines += [
        f"can run    {runs}",
        f"opencv     {cv['version']}: GUI {_yes(cv['gui'])}, GStreamer {_yes(cv['gstreamer'])}, "
        f"V4L2 {_yes(cv['v4l2'])}, FFmpeg {_yes(cv['ffmpeg'])}, Haar cascades {_yes(cv['haar_cascades'])}, "
        f"YuNet class {_yes(cv['yunet_class'])}, {cv['threads']} threads",
        f"cameras    V4L2: {', '.join(cams['v4l2_devices']) or 'none'}; picamera2 {_yes(cams['picamera2'])}; "
        f"display {_yes(cams['display'])}",
    ]
    problem = cams.get("picamera2_problem")
    if problem and not problem.startswith("picamera2 is not installed"):  # installed and broken: say how to fix
        lines.append(f"           {problem}")
    return "\n".join(lines + _model_lines(info.get("models", [])))


def _model_lines(models: list[dict]) -> list[str]:
    lines = []
    for i, m in enumerate(models):
        head = ("models     " if i == 0 else "           ") + m["name"] + (" (default)" if m["default"] else "")
        if "problem" in m:
            lines.append(f"{head}: {m['problem']}")
            continue
        facts = [f"{m['parameters']:,} parameters"] if m["parameters"] else []
        facts += [f"{m['macs'] / 1e6:.1f} M MACs"] if m["macs"] else []
        facts.append(f"{100 * m['accuracy']:.2f} % on {m['faces']:,} faces ({m['data']})" if m["accuracy"] is not None
                     and m["faces"] else "accuracy not verified on labelled faces")
        lines.append(f"{head}: {', '.join(facts)}; run picks {m['run_picks']} here")
    return lines


def run(args) -> int:
    info = gather()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
