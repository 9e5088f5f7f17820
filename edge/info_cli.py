"""`feredge info`: this device, the inference runtimes installed, and what its OpenCV and cameras can do."""
from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def gather() -> dict:
    from feredge.edge.backends import installed_formats
    from feredge.edge.device import camera_facts, device_facts, opencv_facts, runtime_facts

    return {"device": device_facts(), "formats": installed_formats(), "runtimes": runtime_facts(),
            "opencv": opencv_facts(), "cameras": camera_facts()}


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
    return "\n".join(lines)


def run(args) -> int:
    info = gather()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
