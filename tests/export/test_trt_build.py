"""Engine build pieces that need no GPU: profiles from the manifest, precision and version checks,
the manifest's engine record and its refusal on another TensorRT or GPU; the build itself on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from export.trt_build import check_precision, engine_record, parse_version, record_engines
from export.trt_profiles import AxisRange, Profile, ShapeTuple, dim_range, graph_profiles
from runtime.errors import CapacityError, EngineError, ExportError, ManifestError
from runtime.manifest import Manifest
from runtime.trt_engines import DeviceInfo, check_engine_compat, engine_section, pick_profile

ORIN = DeviceInfo("10.3.0", "Orin", "8.7")


def test_profiles_follow_the_manifest(exported_tiny) -> None:
    data = Manifest.load(exported_tiny[0]).data
    C, N = data["limits"]["max_context"], data["limits"]["node_budget"]
    prefill, verify = graph_profiles(data, "decoder")
    assert (prefill.name, verify.name) == ("prefill", "verify")
    embeds = verify.profile["inputs_embeds"]  # [1, new, H]
    assert (embeds.min[1], embeds.opt[1], embeds.max[1]) == (1, N, N)
    mask = verify.profile["attention_mask"]  # [1, 1, new, past + new]
    assert mask.min == (1, 1, 1, 1) and mask.max == (1, 1, N, C + N)
    assert prefill.profile["past_key.0"].max[1] == 0 and prefill.profile["inputs_embeds"].max[1] == C
    S = data["draft"]["scratch_slots"]
    step, dprefill = graph_profiles(data, "draft_step")
    assert step.profile["past_key.0"].max[1] == S + C + 1
    assert dprefill.profile["inputs_embeds"].max[1] == C + 1
    assert graph_profiles(data, "vision")[0].profile["pixel_values"].max[0] == 2


def test_shape_types_refuse_bad_ranges() -> None:
    with pytest.raises(ExportError):
        AxisRange(4, 2, 8)
    with pytest.raises(ExportError):
        ShapeTuple((1, 4), (1, 2), (1, 8))
    p = Profile().add("x", (1, 1), (1, 4), (1, 8)).add("y", (1,), (2,), (3,))
    assert list(p.shapes) == ["x", "y"] and tuple(p["x"]) == ((1, 1), (1, 4), (1, 8))
    assert dim_range("past + new", {"past": AxisRange(0, 5, 10), "new": AxisRange(1, 2, 3)}) == AxisRange(1, 7, 13)
    with pytest.raises(ExportError, match="memory"):
        dim_range("memory", {"new": AxisRange(1, 1, 1)})


def test_precision_checks() -> None:
    check_precision("fp16", "8.6.2")
    check_precision("int4-weight-only", "10.3.0")
    with pytest.raises(EngineError, match="int4 weight-only needs 10.0"):
        check_precision("int4-weight-only", "8.6.2.3")
    with pytest.raises(EngineError, match="Unknown engine precision"):
        check_precision("fp8", "10.3.0")
    assert parse_version("10.3.0.post1") == (10, 3, 0)


def test_engine_record_and_compat(exported_tiny, tmp_path) -> None:
    import shutil

    folder = tmp_path / "art"
    shutil.copytree(exported_tiny[0], folder)
    data = Manifest.load(folder).data
    (folder / "decoder_fp16.engine").write_bytes(b"plan")
    record = engine_record(ORIN, "fp16", {"decoder": graph_profiles(data, "decoder")})
    record_engines(folder, record)
    manifest = Manifest.load(folder)
    section = engine_section(manifest.data)
    assert section["gpu_name"] == "Orin" and section["compute_capability"] == "8.7"
    assert manifest.has("decoder_fp16_engine")
    check_engine_compat(section, ORIN, folder)
    with pytest.raises(EngineError) as error:
        check_engine_compat(section, DeviceInfo("10.7.0", "Orin", "8.7"), folder)
    message = str(error.value)
    assert "10.3.0" in message and "10.7.0" in message and f"build-engines --artifacts {folder} --precision fp16" in message
    with pytest.raises(EngineError, match=r"Orin \(sm 8.7\).*H100 \(sm 9.0\)"):
        check_engine_compat(section, DeviceInfo("10.3.0", "H100", "9.0"), folder)
    with pytest.raises(ManifestError, match="no int8 engines"):
        engine_section(manifest.data, "int8")
    profiles = section["graphs"]["decoder"]["profiles"]
    N = data["limits"]["node_budget"]
    assert pick_profile(profiles, {"new": 30, "past": 0}) == 0
    assert pick_profile(profiles, {"new": N, "past": 20}) == 1
    with pytest.raises(CapacityError, match="No optimization profile"):
        pick_profile(profiles, {"new": N + 1, "past": 20})


def test_weight_only_onnx_matches_float(exported_tiny, tmp_path) -> None:
    """int8 / int4 DequantizeLinear weights run on onnxruntime close to the float graph."""
    import onnxruntime as ort

    from export.trt_weights import weight_only_onnx

    src = Manifest.load(exported_tiny[0]).path("decoder")
    rng = np.random.default_rng(0)
    s0 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in s0.get_inputs():
        shape = [{"new": 3, "past+new": 3}.get(d, 0 if d == "past" else d) if isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = np.arange(3)[None].astype(np.int64) if i.type == "tensor(int64)" else \
            rng.standard_normal(shape).astype(np.float32) * 0.3
    want = s0.run(None, feeds)[0]
    for bits, tol in ((8, 0.05), (4, 0.5)):
        dst = tmp_path / f"decoder_{bits}.onnx"
        assert weight_only_onnx(src, dst, bits, min_size=256) > 0
        got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert np.abs(got - want).max() < tol * np.abs(want).max()


@pytest.mark.gpu
def test_build_fp16_engines_and_reuse_the_timing_cache(exported_tiny, tmp_path) -> None:
    import shutil

    from export.trt_build import EngineBuildConfig, build_engines

    folder = tmp_path / "art"
    shutil.copytree(exported_tiny[0], folder)
    cache = tmp_path / "timing.cache"
    build_engines(EngineBuildConfig(artifacts=folder, precision="fp16", workspace_mb=256, timing_cache=cache))
    size = cache.stat().st_size
    build_engines(EngineBuildConfig(artifacts=folder, precision="int8", workspace_mb=256, timing_cache=cache))
    manifest = Manifest.load(folder)
    assert set(manifest["engines"]) == {"fp16", "int8"} and cache.stat().st_size >= size
