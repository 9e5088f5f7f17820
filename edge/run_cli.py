"""`feredge run`: the camera (or a video, image, folder) through a bundle to a window, JSON, a browser, a file.

With no arguments beyond `--headless` it runs the shipped bundle over the shipped sample faces.
Exit codes: 0 done (a video's or folder's end, --max-frames reached, q in the window); 2 bad input
(missing bundle, unreadable source, unknown backend, no display, camera lost after the retries),
with one line on stderr; 130 after Ctrl-C and 143 after SIGTERM, once the source is closed and a
recording is finalised; 1 a bug. Never imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from feredge.edge import formats
from feredge.edge.device import host_difference, memory_mb
from feredge.edge.paths import SAMPLE_DIR, SHIPPED_RUNS, resolve_bundle

log = logging.getLogger("feredge.run")


def add_arguments(p) -> None:
    p.add_argument("--bundle", default=None, help=f"bundle directory from feredge export, or a shipped model's name: "
                                                   f"{', '.join(SHIPPED_RUNS)} (default: edge)")
    p.add_argument("--source", default=None,
                   help="picamera | picamera:N | camera index (0) | /dev/videoN | gst:PIPELINE | video file | image "
                        "| folder of images (default: the shipped sample faces)")
    p.add_argument("--backend", default="auto", help="auto | tflite | onnx | openvino (auto: the bundle's "
                                                       "benchmark recommendation for this device, else tflite, "
                                                       "openvino, onnx)")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | dynamic | int8 (default: fp32, or the "
                                                      "recommendation)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    p.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU, NPU, AUTO)")
    p.add_argument("--openvino-hint", default=None, choices=("f32", "bf16", "f16"),
                   help="OpenVINO inference precision (default: the device's; CPUs with AMX run fp32 IR in bf16)")
    p.add_argument("--providers", default="auto",
                   help="ONNX Runtime execution providers, comma-separated (default auto: TensorRT, CUDA, CPU)")
    p.add_argument("--detector", default="auto",
                   help="yunet | blazeface | haar | yunet:MODEL.onnx | blazeface:MODEL.tflite | none (the whole "
                        "image is the face) | auto (default: yunet; images up to 128 px are whole faces)")
    p.add_argument("--detect-every", type=int, default=None, metavar="N",
                   help=f"detect faces every N frames and follow them in between (default: {TRACK_EVERY} for "
                        "cameras and videos, 1 for images)")
    p.add_argument("--detect-scale", default="auto",
                   help="detect on the frame scaled by this factor (0-1], or auto: about 640 px wide for yunet, "
                        "320 for haar")
    p.add_argument("--min-face", type=int, default=None,
                   help="smallest face to detect, in frame pixels (default: 40 for yunet and blazeface, 60 for haar)")
    p.add_argument("--align", default="spec", choices=("spec", "on", "off"),
                   help="turn each face upright by its eyes (yunet, blazeface) before labelling it: as the "
                        "bundle's spec says (default), or on/off")
    p.add_argument("--margin", type=float, default=None,
                   help="crop margin around a face box, fraction of its size (default: the bundle's spec)")
    p.add_argument("--smooth", default=None,
                   help="ema:ALPHA | window:N | none (default: ema:0.5 for cameras and videos, none for images, "
                        "where consecutive frames are different faces)")
    p.add_argument("--temporal", nargs="?", const="default", default=None, metavar="BUNDLE",
                   help="also label each face from its last T frames with seed004's temporal head (a bundle "
                        "from exporting a seed004 run; without a value the shipped one); adds temporal_label "
                        "to the JSON lines and a 'temporal' stage")
    p.add_argument("--headless", action="store_true", help="no window: JSON lines to stdout (or --output)")
    p.add_argument("--output", default=None, metavar="FILE", help="JSON lines to FILE (- for stdout)")
    p.add_argument("--serve", default=None, metavar="HOST:PORT",
                   help="a live page for browsers: the annotated stream, a card per face, timings (PORT alone "
                        "binds loopback; 0.0.0.0:PORT for the network)")
    p.add_argument("--serve-quality", type=int, default=80, metavar="Q",
                   help="JPEG quality of the --serve stream, 1-100 (default 80)")
    p.add_argument("--serve-fps", type=float, default=15.0, metavar="N",
                   help="encode and send the --serve stream at most N times a second, once for all viewers "
                        "(default 15; 0: every frame)")
    p.add_argument("--record", default=None, metavar="FILE.mp4", help="record the annotated frames")
    p.add_argument("--loop", action="store_true", help="restart a video, image or folder at its end")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--duration", default=None, metavar="TIME",
                   help="stop after this long, e.g. 90s, 30m, 2h (a soak test: --loop --stats --duration 30m)")
    p.add_argument("--width", type=int, default=None, help="camera frame width")
    p.add_argument("--height", type=int, default=None, help="camera frame height")
    p.add_argument("--fps", type=float, default=None, help="camera frame rate")
    p.add_argument("--retries", type=int, default=5, help="reconnection attempts for a camera that stops (default 5)")
    p.add_argument("--backoff", type=float, default=0.5,
                   help="first reconnection delay in seconds, doubled per attempt (default 0.5)")
    p.add_argument("--stats", action="store_true",
                   help="print time to first result, FPS, mean stage times, memory (peak, and resident at start "
                        "and end), open files and threads to stderr at the end, also after Ctrl-C or SIGTERM")


WARM_FRAMES = 100  # --stats samples memory, files and threads once warm-up is over
MAX_MARGIN = 2.0  # a box grown by twice its size on each side is no longer a face crop
# cameras and videos: detect every 30th frame, follow faces in between and detect again as soon as
# one is lost (it turned, left, or another face took its place). On 640x480 test videos of one
# face (2-core AVX2 EPYC) this found 99.3 % of faces of 60-180 px and 99.5 % of 40-180 px, with
# detection 27-28 % of the frame time at 190-230 FPS; every 20th frame took 31-35 %
# (benchmarks/results/x86_64-epyc-avx2-detectors). A face that appears beside the others waits
# at most 29 frames, one second at 30 FPS: --detect-every trades that wait for speed.
TRACK_EVERY = 30


class _Terminated(Exception):
    """SIGTERM (systemd stop, docker stop): end like Ctrl-C, cleanly."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        import os

        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of /proc/PID/stat: starttime, after pid and (comm)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _parse_scale(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--detect-scale takes a number in (0, 1] or auto, not {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"--detect-scale must be in (0, 1], not {value}")
    return value


def parse_duration(text: str | None) -> float | None:
    """'90s', '30m', '2h' or plain seconds -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    raw = str(text).strip().lower()
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise ValueError(f"--duration takes a time such as 90s, 30m or 2h, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"--duration must be a positive time, not {text!r}")
    return value


def _process_facts() -> dict:
    """Resident memory, open file descriptors and threads of this process now (what a soak watches)."""
    facts = {"rss_mb": memory_mb("VmRSS")}
    try:
        import os

        facts["fds"] = len(os.listdir("/proc/self/fd"))
        facts["threads"] = len(os.listdir("/proc/self/task"))
    except OSError:
        pass
    return facts


def _check_args(args) -> None:
    for name in ("threads", "max_frames", "width", "height"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.detect_every is not None and args.detect_every < 1:
        raise ValueError(f"--detect-every must be at least 1, not {args.detect_every}")
    args.duration_s = parse_duration(args.duration)
    if args.min_face is not None and args.min_face < 1:
        raise ValueError(f"--min-face must be at least 1 pixel, not {args.min_face}")
    if args.margin is not None and not 0 <= args.margin <= MAX_MARGIN:  # also refuses NaN
        raise ValueError(f"--margin must be between 0 and {MAX_MARGIN} (a fraction of the face box), not {args.margin}")
    if args.fps is not None and not 0 < args.fps <= 1000:
        raise ValueError(f"--fps must be above 0 and at most 1000, not {args.fps}")
    if not (args.retries >= 0 and 0 <= args.backoff <= 3600):
        raise ValueError("--retries must be >= 0 and --backoff between 0 and 3600 s")


def _open_temporal(value: str, frame_format: str, frame_bundle):
    """seed004's head, in the per-frame artifact's format when the temporal bundle has it (one runtime)."""
    from feredge.edge.bundle import Bundle, BundleError
    from feredge.edge.paths import DEFAULT_TEMPORAL_BUNDLE
    from feredge.edge.temporal import TemporalHead

    root = DEFAULT_TEMPORAL_BUNDLE if value == "default" else Path(value)
    try:
        formats_here = {a.format for a in Bundle.load(root).artifacts}
        head = TemporalHead.load(root, format=frame_format if frame_format in formats_here else None)
    except BundleError as exc:
        raise ValueError(str(exc)) from None
    log.info("temporal head: %s (%s) over each face's last %d frames", head.id, root, head.frames)
    trained_on = head.bundle.manifest["temporal"].get("frame_model_sha256")
    if trained_on and trained_on != frame_bundle.manifest.get("model", {}).get("sha256"):
        log.warning("the temporal head learned from another per-frame model's log-probabilities than %s "
                    "exported; its labels may be off: train it on this one (feredge train --arch seed004 "
                    "--frame-model ...)", frame_bundle.root)
    return head


def run(args) -> int:
    from feredge.edge.backends import BackendError
    from feredge.edge.bundle import Bundle, BundleError
    from feredge.edge.choose import choose
    from feredge.edge.detect import DEFAULT_DETECTOR, EveryN, WholeFrameDetector, parse_detector
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.smoothing import parse_smoother
    from feredge.edge.sources import SourceLost

    _check_args(args)
    if args.serve:
        from feredge.edge.live_server import check_serve_options

        check_serve_options(args.serve_quality, args.serve_fps)
    if not args.headless and not args.serve:
        from feredge.edge.outputs import display_problem

        problem = display_problem()
        if problem:
            raise ValueError(problem)
    bundle_dir = resolve_bundle(args.bundle)
    if (args.bundle is None or args.bundle in SHIPPED_RUNS) and not (bundle_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{bundle_dir}: the shipped bundle is missing; make it with "
                                f"'feredge export --out {bundle_dir}' or pass --bundle DIR")
    try:
        bundle = Bundle.load(bundle_dir)
    except BundleError as exc:
        raise ValueError(str(exc)) from None

    note = host_difference(bundle.manifest.get("verified_on"))
    if note:
        log.warning("%s", note)
    if args.smooth:
        parse_smoother(args.smooth)  # a typo fails before the model loads
    failed: set[str] = set()
    while True:  # with --backend auto, an artifact that does not open here hands over to the next choice
        choice = choose(bundle, args.backend, args.precision, args.threads, exclude=frozenset(failed))
        options = formats.runtime_options(
            choice.artifact.format, providers=args.providers if args.providers == "auto" else args.providers.split(","),
            device=args.device, precision_hint=args.openvino_hint)
        load_started = time.perf_counter()
        try:
            backend = bundle.open(choice.artifact, threads=choice.threads, **options)
            break
        except (BackendError, BundleError) as exc:
            if args.backend != "auto":
                raise ValueError(str(exc)) from None
            failed.add(choice.artifact.id)
            log.warning("%s does not open here (%s); trying the next choice", choice.artifact.id,
                        str(exc).split(": ", 1)[-1])
    load_s = time.perf_counter() - load_started
    model = bundle.manifest.get("model", {})
    log.info("bundle: %s (model %s, %s parameters)", bundle_dir, model.get("name", "?"),
             f"{model['parameters']:,}" if isinstance(model.get("parameters"), int) else "?")
    log.info("backend: %s (%s, ran as %s) via %s, threads %s; chosen by %s%s", choice.artifact.id,
             bundle.path(choice.artifact).name, backend.precision, backend.runtime, choice.threads or "default",
             choice.reason, "; flip-averaged (2 inferences per face)" if bundle.spec.flip_average else "")

    temporal = _open_temporal(args.temporal, choice.artifact.format, bundle) if args.temporal else None
    source_text = args.source if args.source is not None else str(SAMPLE_DIR)
    is_default_source = args.source is None
    detector_text = args.detector
    if detector_text == "auto":
        detector_text = "none" if is_default_source else DEFAULT_DETECTOR
    detector = parse_detector(detector_text, scale=_parse_scale(args.detect_scale), min_face=args.min_face,
                              precropped_max=128 if args.detector == "auto" and not is_default_source else None)
    from feredge.edge.live_server import MjpegServer, parse_host_port
    from feredge.edge.outputs import JsonLinesSink, Recorder, WindowSink
    from feredge.edge.sources import ImageSource, open_source

    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    code = 0
    summary = pipeline = None
    first_age: list[float | None] = []
    timed_out: list[bool] = []
    frames_seen = [0]
    at_start, at_warm = _process_facts(), {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if temporal is not None:
            stack.callback(temporal.close)
        try:
            source = stack.enter_context(open_source(
                source_text, loop=args.loop, width=args.width, height=args.height, fps=args.fps,
                retries=args.retries, backoff=args.backoff))
            smooth = args.smooth or ("none" if isinstance(source, ImageSource) else "ema:0.5")
            # consecutive images are different pictures: nothing to follow between them
            every = args.detect_every or (1 if isinstance(source, ImageSource) else TRACK_EVERY)
            if every > 1 and not isinstance(detector, WholeFrameDetector):
                detector = EveryN(detector, every)
            if temporal is not None and isinstance(source, ImageSource):
                log.warning("--temporal on %s: images are read as separate pictures, so a track's last %d "
                            "frames may be different faces; it is meant for a video or a camera", source.name,
                            temporal.frames)
            spec = bundle.spec if args.align == "spec" else bundle.spec.replace(align=args.align == "on")
            pipeline = Pipeline(backend, spec, bundle.labels, detector, parse_smoother(smooth), args.margin,
                                temporal=temporal)
            log.info("source: %s; detector: %s%s; smoothing: %s; margin %.2f", source.name, detector.name,
                     ", eye-aligned crops" if spec.align and detector_text.startswith(("yunet", "blazeface")) else "",
                     smooth, pipeline.margin)
            sinks, read_from = [], source
            json_target = args.output if args.output else ("-" if args.headless else None)
            if json_target:
                sinks.append(stack.enter_context(JsonLinesSink(json_target)))
            if args.serve:
                host, port = parse_host_port(args.serve)
                server = stack.enter_context(MjpegServer(
                    host, port, quality=args.serve_quality, max_fps=args.serve_fps,
                    run_info=_serve_info(bundle, choice, backend, source, detector, smooth, temporal)))
                log.info("serving the live view at %s", server.url)
                sinks.append(server)
                read_from = server.tap(source)  # the pipeline draws nothing for the page: the server does
            if args.record:
                sinks.append(stack.enter_context(Recorder(args.record, fps=source.fps or args.fps or 15.0)))
            if not args.headless and not args.serve:
                sinks.append(stack.enter_context(WindowSink()))
            def note_first(result):
                if not first_age:
                    first_age.append(process_age_s())
                frames_seen[0] += 1
                if frames_seen[0] == WARM_FRAMES:
                    at_warm.update(_process_facts())  # after warm-up: the baseline a leak grows from
                if args.duration_s is not None and time.perf_counter() - started >= args.duration_s:
                    timed_out.append(True)
                    return False  # --duration reached: end like a sink that asks to stop

            summary = pipeline.run(read_from, sinks, max_frames=args.max_frames, on_result=note_first)
            if timed_out:
                summary.ended = f"--duration {args.duration}"
        except SourceLost as exc:
            raise ValueError(str(exc)) from None
        except (KeyboardInterrupt, _Terminated) as stop:
            code = 130 if isinstance(stop, KeyboardInterrupt) else 143
            log.warning("%s: source closed%s", "interrupted" if code == 130 else "terminated",
                        ", recording kept" if args.record else "")
            if pipeline is not None and pipeline.last_summary is not None:  # what ran until then still counts
                summary = pipeline.last_summary
                summary.ended = "interrupted" if code == 130 else "terminated"
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    if summary is not None:
        log.info("%d frames, %d faces in %.1f s (%.1f FPS); %s", summary.frames, summary.faces, summary.seconds,
                 summary.fps, summary.ended)
    if args.stats:
        _print_stats(summary, load_s, backend, choice, first_age[0] if summary and first_age else None,
                     at_start, _process_facts(), at_warm)
    return code


def _serve_info(bundle, choice, backend, source, detector, smooth: str, temporal) -> dict:
    """The run's facts that the --serve page shows beside the per-frame record."""
    return {"backend": backend.runtime, "artifact": choice.artifact.id, "file": bundle.path(choice.artifact).name,
            "precision": backend.precision, "threads": choice.threads or "default", "source": source.name,
            "detector": detector.name, "smoothing": smooth, "temporal": temporal.id if temporal else None,
            "labels": list(bundle.labels)}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _print_stats(summary, load_s: float, backend, choice, first_age: float | None, at_start: dict,
                 at_end: dict, at_warm: dict) -> None:
    lines = [f"stats: backend {choice.artifact.id} ({backend.precision}, {backend.runtime}), "
             f"threads {choice.threads or 'default'}, model load {1000 * load_s:.0f} ms"]
    if summary is not None and summary.first_result_s is not None:
        first = summary.first_result_s
        if first_age is not None:
            lines.append(f"stats: time to first result {first_age:.2f} s from process start "
                         f"({first * 1000:.0f} ms from the first read)")
        else:
            lines.append(f"stats: first result {first * 1000:.0f} ms after the first read")
    if summary is not None and summary.frames:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in summary.stage_ms_mean.items())
        lines.append(f"stats: {summary.frames} frames in {summary.seconds:.2f} s = {summary.fps:.1f} FPS; "
                     f"mean ms per frame: {stages}")
    if summary is not None:
        lines.append(f"stats: ended by {summary.ended or 'an error'}")
    warm = f", after {WARM_FRAMES} frames {at_warm['rss_mb']:.1f} MB" if at_warm else ""
    lines.append(f"stats: peak memory (peak RSS) {memory_mb():.0f} MB; resident at start {at_start['rss_mb']:.1f} MB"
                 f"{warm}, at end {at_end['rss_mb']:.1f} MB")
    if "fds" in at_start and "fds" in at_end:
        lines.append(f"stats: open files {at_start['fds']} at start, {at_end['fds']} at end; threads "
                     f"{at_start['threads']} at start, {at_end['threads']} at end")
    for line in lines:
        print(line, file=sys.stderr)
