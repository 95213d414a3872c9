"""export/quantize.py: block quantization round trip, and onnxruntime's MatMulNBits computing with
exactly the dequantized weights; a quantized draft keeps speculative output lossless."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.quantize import dequantize_blocks, quantize_blocks, quantize_matmuls


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_blocks_round_trip(bits) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    packed, scales = quantize_blocks(weight, bits, 32)
    assert packed.dtype == np.uint8 and packed.shape == (24, 2, 32 * bits // 8)
    assert scales.shape == (24, 2)
    back = dequantize_blocks(packed, scales, bits, 64)
    step = np.repeat(scales.T, 32, axis=0)  # [K, N] the scale of each weight's block
    assert np.all(np.abs(back - weight) <= step / 2 + 1e-6)


def _matmul_model(path, weight: np.ndarray, as_constant_node: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "t", n])
    tensor = numpy_helper.from_array(weight, "w")
    nodes, inits = [], []
    if as_constant_node:  # torch.onnx.export's folded weights can come as Constant nodes
        nodes.append(helper.make_node("Constant", [], ["w"], value=tensor))
    else:
        inits.append(tensor)
    nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("as_constant_node", [False, True])
def test_matmulnbits_equals_dequantized_matmul(tmp_path, bits, as_constant_node) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 40)).astype(np.float32)
    path = tmp_path / "mm.onnx"
    _matmul_model(path, weight, as_constant_node)
    assert quantize_matmuls(path, bits, block_size=32, min_elements=0) == ["mm"]
    x = rng.standard_normal((1, 5, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    packed, scales = quantize_blocks(weight, bits, 32)
    np.testing.assert_allclose(got, x @ dequantize_blocks(packed, scales, bits, 64), rtol=1e-4, atol=1e-4)


def test_small_weights_stay_float(tmp_path) -> None:
    path = tmp_path / "mm.onnx"
    _matmul_model(path, np.ones((32, 8), np.float32), as_constant_node=False)
    assert quantize_matmuls(path, 8, block_size=32, min_elements=1 << 16) == []


def test_quantized_draft_stays_lossless(exported_tiny, tiny_tree, image, tmp_path) -> None:
    """A draft with int4 weights proposes other tokens, but greedy output is still the target's."""
    from export.manifest import write_manifest
    from runtime.decode import autoregressive_generate, speculative_generate
    from runtime.manifest import Manifest
    from runtime.ort_draft import OrtDraftRunner
    from runtime.ort_target import OrtTargetRunner
    from runtime.preprocess import PromptBuilder

    source, adapter = exported_tiny
    folder = tmp_path / "int4"
    shutil.copytree(source, folder)
    body = json.loads((folder / "manifest.json").read_text())
    files = {key: entry["path"] for key, entry in body.pop("files").items()}
    assert quantize_matmuls(folder / "draft_step.onnx", 4, block_size=16, min_elements=0)
    body["draft"]["weights"] = "int4"
    write_manifest(folder, {k: v for k, v in body.items() if k not in ("format_version", "package_version", "git_sha")},
                   files)
    manifest = Manifest.load(folder)
    prompts = PromptBuilder(folder, manifest["processor"])
    target = OrtTargetRunner(manifest, threads=1)
    draft = OrtDraftRunner(manifest, target.embeddings, threads=1)
    eos = adapter.spec.eos_token_ids
    for question in ["What is it?", "hi"]:
        spec = speculative_generate(target, draft, prompts.build(image, question), tiny_tree, max_new_tokens=24,
                                    eos_ids=eos)
        ar = autoregressive_generate(target, prompts.build(image, question), max_new_tokens=24, eos_ids=eos)
        np.testing.assert_array_equal(spec.tokens, ar.tokens)
