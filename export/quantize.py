"""Weight-only block quantization of an exported graph's MatMuls (onnxruntime's `MatMulNBits`).

Place in the data flow: `draft_step.onnx` (float32, parity-checked) -> `quantize_matmuls` ->
`draft_step.onnx` with `com.microsoft.MatMulNBits` nodes, when the export asks for it
(`ExportConfig.draft_weights`). Only the draft is ever quantized: it only proposes tokens, so
the answer stays the target's own (lossless acceptance), while each draft step reads a quarter
(8 bits) or an eighth (4 bits) of the weight bytes. A small-batch draft step on a CPU is
bandwidth-bound, so that is what its latency follows (`runtime/step_timing.py`).

Scheme: symmetric per block of `block_size` input features; q = round(w / scale) + 2^(bits-1)
with scale = max|w| / (2^(bits-1) - 1), stored bit-packed (low bits first) as
`B [N, K / block_size, block_size * bits / 8]` uint8, `scales [N, K / block_size]` float32, and
no zero-point input (the op's default zero point is 2^(bits-1)).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.errors import ExportError

logger = logging.getLogger(__name__)

WEIGHT_FORMATS = {"float32": None, "int8": 8, "int4": 4}


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] float -> (packed B [N, K/bs, bs*bits/8] uint8, scales [N, K/bs] float32)."""
    k, n = weight.shape
    if k % block_size:
        raise ExportError("A quantized MatMul needs K divisible by the block size.", note=f"K={k}, block {block_size}")
    blocks = weight.T.reshape(n, k // block_size, block_size).astype(np.float32)  # [N, kb, bs]
    top = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(axis=-1) / top  # [N, kb]
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -top - 1, top).astype(np.int32) + top + 1  # [0, 2^bits)
    q = q.astype(np.uint8)
    if bits == 8:
        packed = q
    elif bits == 4:
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    else:
        raise ExportError(f"Unsupported weight bits {bits}.", hint="use 8 or 4")
    return np.ascontiguousarray(packed), scales


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The inverse of `quantize_blocks`: W [K, N] float32 as MatMulNBits computes with it."""
    if bits == 4:
        q = np.stack((packed & 0x0F, packed >> 4), axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
    else:
        q = packed
    w = (q.astype(np.float32) - 2 ** (bits - 1)) * scales[..., None]  # [N, kb, bs]
    return w.reshape(w.shape[0], k).T


def _constant(tensor, gs) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    producers = tensor.inputs
    if len(producers) == 1 and producers[0].op == "Constant":
        value = producers[0].attrs.get("value")
        return None if value is None else np.asarray(value.values)
    return None


def quantize_matmuls(path: Path, bits: int, block_size: int = 32, min_elements: int = 1 << 16,
                     accuracy_level: int = 0) -> list[str]:
    """Rewrites `path` in place: every MatMul with a constant 2D weight of at least `min_elements`
    elements becomes a MatMulNBits. Returns the names of the rewritten nodes.

    Args:
        path: an .onnx file (external data is read and written back inline).
        bits: 8 or 4.
        block_size: input features per scale (a power of two, >= 16).
        min_elements: smaller weights stay float32 (their bytes do not matter).
        accuracy_level: MatMulNBits' compute precision for A: 0 keeps float32 activations.
    """
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(path)))
    done = []
    for node in list(graph.nodes):
        weight = _constant(node.inputs[1], gs) if node.op == "MatMul" else None
        if weight is None:
            continue
        if weight.ndim != 2 or weight.size < min_elements or weight.shape[0] % block_size:
            continue
        k, n = weight.shape
        packed, scales = quantize_blocks(weight, bits, block_size)
        b = gs.Constant(f"{node.name}.nbits_weight", packed)
        s = gs.Constant(f"{node.name}.nbits_scales", scales)
        node.op, node.domain = "MatMulNBits", "com.microsoft"
        node.inputs = [node.inputs[0], b, s]
        node.attrs = {"K": k, "N": n, "bits": bits, "block_size": block_size, "accuracy_level": accuracy_level}
        done.append(node.name)
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    logger.info("quantized %d MatMuls of %s to %d bits", len(done), path.name, bits)
    return done
