"""Every installed backend gives the same answers on the same faces; --backend auto chooses sensibly."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from feredge.edge.backends import installed_formats
from feredge.edge.bundle import Bundle
from feredge.edge.choose import choose
from feredge.edge.device import device_key
from feredge.edge.preprocess import preprocess
from runtime_support import MODEL_DIR, build_test_bundle, sample_faces

BUNDLE_TFLITE = MODEL_DIR / "bundle" / "model.fp32.tflite"

INSTALLED = [f for f in ("tflite", "onnx", "openvino") if f in installed_formats()]


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return Bundle.load(build_test_bundle(bundle_cache))


def _open(bundle, fmt, precision, **kw):
    if fmt == "openvino":
        kw.setdefault("precision_hint", "f32")  # AMX CPUs run fp32 IR in bf16 unless told otherwise
    return bundle.open(format=fmt, precision=precision, threads=1, **kw)


def test_installed_backends_agree_on_the_same_faces(bundle):
    assert len(INSTALLED) >= 2, f"need two runtimes to compare, have {INSTALLED}"
    images, _, _ = sample_faces()
    batch = preprocess(images, bundle.spec)
    probs = {fmt: _open(bundle, fmt, "fp32").predict(batch) for fmt in INSTALLED}
    reference = probs[INSTALLED[0]]
    assert reference.shape == (len(images), len(bundle.labels))
    np.testing.assert_allclose(reference.sum(axis=1), 1.0, atol=1e-4)
    for fmt in INSTALLED[1:]:
        agreement = float((probs[fmt].argmax(1) == reference.argmax(1)).mean())
        assert agreement >= 0.99, (fmt, agreement)
        assert float(np.abs(probs[fmt] - reference).max()) < 1e-3, fmt


def test_int8_artifacts_stay_close_to_fp32(bundle):
    images, _, _ = sample_faces(per_class=20)
    batch = preprocess(images, bundle.spec)
    for fmt in INSTALLED:
        fp32 = _open(bundle, fmt, "fp32").predict(batch)
        int8 = _open(bundle, fmt, "int8")
        assert "int8" in int8.precision
        agreement = float((int8.predict(batch).argmax(1) == fp32.argmax(1)).mean())
        assert agreement >= 0.9, (fmt, agreement)


def test_batched_and_single_predictions_match(bundle):
    """The pipeline sends all faces of a frame in one batch; it must equal one face at a time."""
    images, _, _ = sample_faces(per_class=1)
    batch = preprocess(images, bundle.spec)
    for fmt in INSTALLED:
        backend = _open(bundle, fmt, "fp32")
        together = backend.predict(batch)
        alone = np.concatenate([backend.predict(batch[i:i + 1]) for i in range(len(batch))])
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=fmt)


def test_auto_without_recommendation_prefers_tflite_fp32(bundle):
    choice = choose(bundle, "auto")
    assert choice.artifact.id == f"{INSTALLED[0]}-fp32"
    assert "default order" in choice.reason
    assert choose(bundle, "auto", precision="int8").artifact.precision == "int8"
    assert choose(bundle, "onnx").artifact.id == "onnx-fp32"


def test_auto_follows_a_recommendation_for_this_device_only(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    rec = {"device": device_key(), "artifact": "onnx-int8", "threads": 2}
    (copy / "recommendation.json").write_text(json.dumps(rec))
    choice = choose(Bundle.load(copy), "auto")
    assert (choice.artifact.id, choice.threads) == ("onnx-int8", 2)
    assert "recommendation" in choice.reason
    assert choose(Bundle.load(copy), "auto", threads=1).threads == 1  # the flag wins
    assert choose(Bundle.load(copy), "auto", precision="fp32").artifact.id == "tflite-fp32"

    rec["device"] = {**device_key(), "cpu": "Cortex-A76"}
    (copy / "recommendation.json").write_text(json.dumps(rec))
    assert choose(Bundle.load(copy), "auto").artifact.id == "tflite-fp32"

    (copy / "recommendation.json").write_text("{not json")
    assert choose(Bundle.load(copy), "auto").artifact.id == "tflite-fp32"


def test_unknown_or_missing_backend_is_a_clear_error(bundle):
    with pytest.raises(ValueError, match="unknown backend"):
        choose(bundle, "tensorrt")
    with pytest.raises(ValueError, match="no artifact"):
        choose(bundle, "tflite", precision="fp16")


def test_read_only_input_is_accepted(bundle):
    """Faces from a memory-mapped .npy are read-only; every backend must still take them."""
    x = np.random.default_rng(0).random((3, *bundle.spec.input_shape), dtype=np.float32)
    x.flags.writeable = False
    for fmt in INSTALLED:
        assert _open(bundle, fmt, "fp32").predict(x).shape == (3, len(bundle.labels))
        assert _open(bundle, fmt, "fp32").predict(x[:1]).shape == (1, len(bundle.labels))


_KERNELS = """
import collections, json, sys
import openvino as ov
compiled = ov.Core().compile_model(sys.argv[1], "CPU")
kinds = collections.Counter()
for op in compiled.get_runtime_model().get_ops():
    info = op.get_rt_info()
    if info["layerType"].astype(str) == "Convolution":
        kinds[info["primitiveType"].astype(str)] += 1
print(json.dumps(kinds))
"""


@pytest.mark.skipif("openvino" not in INSTALLED or platform.machine() not in ("x86_64", "AMD64"),
                    reason="OpenVINO's x86 kernels")
def test_openvino_int8_runs_the_isa_the_tests_cap_it_to(bundle):
    """conftest caps oneDNN at AVX2 so that a VNNI or AMX machine runs this machine's int8 kernels;
    the cap is real: a lower one (SSE4.1) moves every convolution to SSE kernels."""
    xml = str(bundle.path(bundle.find("openvino", "int8")))

    def kernels(cap):
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap, "OV_CPU_MAX_ISA": cap}
        done = subprocess.run([sys.executable, "-c", _KERNELS, xml], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    capped = kernels("AVX2")
    assert capped and all("I8" in k and not any(w in k for w in ("avx512", "amx", "vnni")) for k in capped), capped
    lowered = kernels("SSE41")
    assert lowered and all("sse" in k for k in lowered), lowered


@pytest.mark.skipif("openvino" not in INSTALLED or platform.machine() not in ("x86_64", "AMD64"),
                    reason="OpenVINO's x86 kernels")
def test_one_isa_cap_is_enough_for_openvino(bundle):
    """A user who sets ONEDNN_MAX_CPU_ISA alone gets the whole CPU plugin capped: on a CPU with
    AVX512-BF16 the plugin would otherwise choose bf16 from the CPU's flags, which the capped
    oneDNN cannot run, and the fp32 IR (its max pooling) failed to compile."""
    script = ("import sys\nfrom feredge.edge.backends.openvino import OpenVINOBackend\n"
              "print(OpenVINOBackend(sys.argv[1], threads=1).precision)\n")
    env = {k: v for k, v in os.environ.items() if k != "OV_CPU_MAX_ISA"}
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    fp32 = str(bundle.path(bundle.find("openvino", "fp32")))
    done = subprocess.run([sys.executable, "-c", script, fp32], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "fp32"  # the device default under an AVX2 cap, as on AVX2 CPUs


def test_tensorrt_gets_an_engine_cache_beside_the_model_and_its_precisions(bundle):
    from feredge.edge.backends.base import BackendError
    from feredge.edge.backends.onnxrt import choose_providers, provider_config

    int8 = bundle.path(bundle.find("onnx", "int8"))
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    config = provider_config(choose_providers("auto", jetson), int8, quantized=True)
    name, options = config[0]
    assert name == "TensorrtExecutionProvider" and config[1:] == jetson[1:]
    assert options["trt_engine_cache_path"] == str(int8.resolve().parent / "trt_cache")
    assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "True"
    assert options["trt_int8_enable"] == "True"  # the QDQ scales, no calibration table
    fp32 = provider_config(jetson, bundle.path(bundle.find("onnx", "fp32")), quantized=False)
    assert fp32[0][1]["trt_int8_enable"] == "False"
    # against this machine's real provider list: auto takes what is there, an absent one is refused
    import onnxruntime

    here = onnxruntime.get_available_providers()
    assert choose_providers("auto", here) == [p for p in jetson if p in here] or here
    if "TensorrtExecutionProvider" not in here:
        with pytest.raises(BackendError, match="TensorrtExecutionProvider not available here"):
            _open(bundle, "onnx", "int8", providers="TensorrtExecutionProvider")


def test_litert_banner_is_filtered_but_native_errors_still_show(tmp_path):
    """LiteRT's XNNPACK banner on fd 2 is dropped; any other native line written there is kept."""
    code = ("import os, sys; from feredge.edge.native_log import banners_filtered\n"
            "from feredge.edge.backends import open_artifact\n"
            "with banners_filtered():\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nE native: something broke\\n')\n"
            f"open_artifact({str(BUNDLE_TFLITE)!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK" not in result.stderr and "E native: something broke" in result.stderr
