"""Weight-only quantization for TensorRT: MatMul weights as int8 / int4 behind `DequantizeLinear`.

Place in the data flow: `decoder.onnx` (float32) -> `weight_only_onnx` -> `decoder_int8.onnx` /
`decoder_int4-weight-only.onnx` -> `export/trt_build.py`. TensorRT reads a constant weight behind a
DequantizeLinear as an explicitly quantized weight (weight-only quantization: activations stay in
fp16, GEMMs read 1 or 0.5 bytes per weight). Unlike `export/quantize.py` (onnxruntime's contrib
`MatMulNBits`), only standard ONNX ops are written, so onnxruntime on the CPU checks the numbers.

Schemes (symmetric, no zero point; W is [K, N], y = x @ W):

    int8   per output channel: scale [N], q = round(W / scale) in [-127, 127]   (opset 13+)
    int4   per block of `block_size` input rows: scale [K / bs, N], q in [-7, 7] (opset 21 blocked DQ)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.errors import ExportError

logger = logging.getLogger(__name__)

INT4_OPSET = 21


def quantize_weight(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] -> (q int8 [K, N] (values fit `bits`), scale float32 [N] or [K / bs, N])."""
    top = 2 ** (bits - 1) - 1
    if bits == 8:
        scale = np.abs(weight).max(axis=0) / top  # [N]
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.rint(weight / scale), -top, top).astype(np.int8), scale
    k, n = weight.shape
    if k % block_size:
        raise ExportError("int4 weights need K divisible by the block size.", note=f"K={k}, block {block_size}")
    blocks = weight.reshape(k // block_size, block_size, n)
    scale = np.abs(blocks).max(axis=1) / top  # [K / bs, N]
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[:, None]), -top, top).reshape(k, n)
    return q.astype(np.int8), scale


def weight_only_onnx(src: Path, dst: Path, bits: int, block_size: int = 32, min_size: int = 1 << 14) -> int:
    """Rewrites every MatMul with a constant 2D float weight of at least `min_size` elements.

    Returns:
        The number of MatMuls quantized.

    Raises:
        ExportError: `bits` other than 8 or 4.
    """
    import onnx
    from onnx import helper, numpy_helper, version_converter

    if bits not in (8, 4):
        raise ExportError(f"Weight-only quantization takes 8 or 4 bits, not {bits}.")
    model = onnx.load(str(src))
    if bits == 4 and _opset(model) < INT4_OPSET:
        model = version_converter.convert_version(model, INT4_OPSET)  # blocked DequantizeLinear
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32 or weight.size < min_size:
            continue
        if bits == 4 and weight.shape[0] % block_size:
            continue
        q, scale = quantize_weight(weight, bits, block_size)
        base = node.input[1]
        q_tensor = numpy_helper.from_array(q, f"{base}_q")
        if bits == 4:
            q_tensor = helper.make_tensor(f"{base}_q", onnx.TensorProto.INT4, q.shape, q.flatten().tolist())
        graph.initializer.extend([q_tensor, numpy_helper.from_array(scale, f"{base}_scale")])
        attrs = {"axis": 1} if bits == 8 else {"axis": 0, "block_size": block_size}
        dq = helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale"], [f"{base}_dq"],
                              name=f"{node.name or base}/weight_dq", **attrs)
        graph.node.append(dq)
        node.input[1] = f"{base}_dq"
        done += 1
    _drop_unused(graph)
    _toposort(model, dst)
    logger.info("weight-only int%d: %d MatMuls in %s", bits, done, dst.name)
    return done


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _drop_unused(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _toposort(model, dst: Path) -> None:
    """Sorts the nodes (the DequantizeLinear nodes were appended) and saves the model."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.toposort()
    onnx.save(gs.export_onnx(graph), str(dst))
