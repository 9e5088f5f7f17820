"""feredge.benchmarks.arm_emulation's pieces, on the host: the commands it builds and the steps it runs.

The emulation itself needs root, apt and minutes per step, so it is not part of the suite; here the
same steps run on the host's Python instead of qemu, through the same runner and report.
"""
from __future__ import annotations

import sys
from pathlib import Path

from feredge.benchmarks import arm_emulation as arm

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "pretrained" / "bundle"


def test_wheels_are_laid_out_for_bookworm_arm64():
    cmd = arm.wheel_command(Path("/w/site"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--only-binary=:all:" in cmd
    tags = {cmd[i + 1] for i, word in enumerate(cmd) if word == "--platform"}
    assert "manylinux_2_27_aarch64" in tags  # ai-edge-litert 2.3's tag: without it pip falls back to 1.4
    assert "manylinux_2_35_aarch64" in tags  # openvino 2026's
    assert all(t.endswith("aarch64") for t in tags)
    assert cmd[cmd.index("--abi") + 1] == "cp311" and cmd[cmd.index("--python-version") + 1] == "3.11"
    assert not any("tensorflow" in w for w in cmd)  # the device runtime never needs it
    pi = arm.wheel_command(Path("/w/site"), pi_os=True)
    assert "numpy==1.24.2" in pi and pi[pi.index("-c") + 1].endswith("constraints/pi-bookworm.txt")
    assert (REPO / "constraints" / "pi-bookworm.txt").read_text().count("numpy<2") == 1


def test_the_emulated_python_gets_the_cpu_the_root_and_a_clean_environment(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/somewhere/else")
    prefix, env = arm.emulated(Path("/w"), "cortex-a72")
    assert prefix == ["/w/qemu/usr/bin/qemu-aarch64", "-cpu", "cortex-a72", "-L", "/w/bookworm",
                      "/w/bookworm/usr/bin/python3"]
    assert env["PYTHONPATH"].split(":") == ["/w/site-cp311", str(REPO)]
    assert "PYTHONHOME" not in env and env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_every_artifact_gets_an_eval_step_and_the_test_files_exist(tmp_path):
    import json

    names = [name for name, _ in arm.steps(BUNDLE, tmp_path / "v.mp4", None, None)]
    artifacts = [a["id"] for a in json.loads((BUNDLE / "manifest.json").read_text())["artifacts"]]
    assert names[:2] == ["tests", "info"] and [n for n in names if n.startswith("run ")] == \
        ["run tflite", "run onnx", "run openvino"]
    assert [n[5:] for n in names if n.startswith("eval ")] == artifacts
    assert all((REPO / t).is_file() for t in arm.RUNTIME_TESTS)


def test_the_steps_run_and_report_through_the_same_runner_on_the_host(tmp_path):
    steps = dict(arm.steps(BUNDLE, tmp_path / "v.mp4", None, 35))
    env = arm.environment(None)
    info = arm.run_step([sys.executable], env, steps["info"], timeout=300)
    assert info["passed"] and "tflite" in info["can_run"]
    scored = arm.run_step([sys.executable], env, steps["eval tflite-int8"], timeout=300)
    assert scored["passed"] and scored["faces"] == 35 and 0.4 < scored["accuracy"] <= 1.0
    broken = arm.run_step([sys.executable], env, ["-m", "feredge.edge.cli", "eval", "--model", "/nonexistent.tflite"], 300)
    assert not broken["passed"] and broken["exit"] == 2 and "no such artifact file" in broken["last_error"]
    table = arm.to_markdown({"host": "h", "qemu": "q", "note": "n", "wheels": "w",
                             "cpus": {"cortex-a72": {"eval tflite-int8": scored, "info": info}}})
    assert "| eval tflite-int8 | pass, " in table and "of 35 |" in table
