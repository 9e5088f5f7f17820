"""Results that hold on any CPU: export targets, the host record, preprocessing flags for foreign models.

The int8 schemes themselves are checked on real quantized files in test_export.py; these tests
need neither TensorFlow nor a runtime.
"""
from __future__ import annotations

import pytest

from feredge.edge import preprocess_flags
from feredge.edge.device import describe_host, host_difference, host_record, isa_flags
from feredge.edge.preprocess import PreprocessSpec
from feredge.export import onnx as onnx_export
from feredge.export import openvino as ov_export
from feredge.export.pipeline import plan
from feredge.export.targets import TARGETS, get_target, host_warning

AVX2 = {"machine": "x86_64", "cpu": "AMD EPYC", "isa": ["avx2"]}
AMX = {"machine": "x86_64", "cpu": "Intel Xeon Platinum 8480C", "isa": ["avx2", "avx512f", "avx512_vnni", "amx_int8"]}
PI4 = {"machine": "aarch64", "cpu": "Cortex-A72", "isa": ["asimd"]}


def test_host_record_names_the_cpu_and_only_known_isa_flags():
    record = host_record()
    assert record["machine"] and record["cpu"]
    assert set(record["isa"]) <= set(isa_flags()) and record["isa"] == isa_flags()
    assert describe_host(AVX2) == "AMD EPYC (x86_64; avx2)"
    assert describe_host({**PI4, "isa": []}) == "Cortex-A72 (aarch64; no int8 extensions)"


def test_host_difference_is_one_line_only_when_the_cpu_differs():
    assert host_difference(AVX2, AVX2) is None
    assert host_difference(None, AVX2) is None  # a bundle from before the record existed
    note = host_difference(AMX, AVX2)
    assert note and "\n" not in note and "Xeon" in note and "AMD EPYC" in note and "feredge bench" in note
    assert host_difference({**AVX2, "isa": ["avx2", "avx512_vnni"]}, AVX2)  # same name, other ISA


def test_every_target_uses_known_schemes_and_formats():
    for target in TARGETS.values():
        assert target.onnx_scheme in onnx_export.SCHEMES and target.openvino_scheme in ov_export.SCHEMES
        jobs, _ = plan(target.formats, target.precisions)
        assert jobs and {fmt for fmt, _ in jobs} <= set(target.formats)
    assert get_target(None).name == "generic"
    with pytest.raises(ValueError, match="unknown --target 'pi3'.*generic"):
        get_target("pi3")


def test_only_the_vnni_target_uses_schemes_that_saturate_somewhere():
    for target in TARGETS.values():
        portable = onnx_export.SCHEMES[target.onnx_scheme].portable and ov_export.SCHEMES[target.openvino_scheme][1]
        assert portable == (target.name != "x86-vnni"), target.name
    assert "openvino" not in get_target("pi4").formats  # its int8 IR does not compile on Cortex-A72
    vnni = get_target("x86-vnni")
    warning = host_warning(vnni, AVX2)
    assert warning and "AMD EPYC" in warning and "--target generic" in warning
    assert host_warning(vnni, AMX) is None and host_warning(get_target("generic"), AVX2) is None


def test_preprocess_flags_parse_and_refuse_bad_values():
    assert preprocess_flags.parse("64", 1, "symmetric", "none") == {
        "height": 64, "width": 64, "channels": 1, "normalize": "symmetric", "equalize": "none"}
    assert preprocess_flags.parse(normalize="zscore:0.5,0.25") == {"normalize": "zscore", "mean": 0.5, "std": 0.25}
    for kwargs, needle in (({"input_size": "48by48"}, "HxW"), ({"normalize": "minmax"}, "unit, symmetric"),
                           ({"normalize": "zscore"}, "zscore:0.5,0.25"), ({"normalize": "unit:2"}, "only zscore"),
                           ({"equalize": "ahe"}, "none, global, clahe")):
        with pytest.raises(ValueError, match=needle):
            preprocess_flags.parse(**kwargs)


def test_a_model_without_a_spec_needs_the_flags_and_never_gets_a_guess():
    with pytest.raises(ValueError, match=r"net\.h5: no preprocess\.json.*--normalize and --equalize"):
        preprocess_flags.resolve(None, {}, (64, 64, 1), "net.h5")
    with pytest.raises(ValueError, match="--equalize"):
        preprocess_flags.resolve(None, {"normalize": "unit"}, (64, 64, 1), "net.h5")
    spec, how = preprocess_flags.resolve(None, {"normalize": "symmetric", "equalize": "none"}, (64, 64, 1), "net.h5")
    assert spec == PreprocessSpec(height=64, width=64, channels=1, normalize="symmetric") and how == "flags"
    with pytest.raises(ValueError, match="flags say 48x48x1 input but the model takes 64x64x1"):
        preprocess_flags.resolve(None, {"height": 48, "width": 48, "normalize": "unit", "equalize": "none"},
                                 (64, 64, 1), "net.h5")


def test_flags_override_a_spec_field_by_field():
    found = PreprocessSpec(equalize="global")
    spec, how = preprocess_flags.resolve(found, {"normalize": "symmetric"}, (48, 48, 1), "run/model.keras")
    assert spec.equalize == "global" and spec.normalize == "symmetric" and how == "preprocess.json with flags"
    assert preprocess_flags.resolve(found, {}, (48, 48, 1), "m") == (found, "preprocess.json")
