"""Exports a DREAM draft: the step graph, the feature-memory graph, and its small constant tables.

Writes into the artifact folder (keys as in the manifest's `files`):

    draft_step.onnx     DraftStep (export/draft_graphs.py), top-k fixed to the tree's top_k, outputs for
                        the last `head_rows` = scratch slots tokens
    draft_chain.onnx    the same DraftStep with outputs for the last token only (the runtime's chains)
    draft_memory.onnx   DraftMemory, for drafts that read target features
    draft_null_key.npy, draft_null_value.npy   [Hkv, D] the cross-attention null entry
    draft_null_feature.npy                     [H_d] the "concat" null feature
    draft_d2t.npy                              [V_d] draft -> target ids, with a reduced vocabulary

and the manifest's `draft` section (the DraftSpec, scratch slots, max depth, weight format). Parity of
both graphs is checked against the PyTorch modules, before `draft_weights` other than float32
quantize the step graph's MatMuls (`export/quantize.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export import contract
from export.draft_graphs import DraftMemory, DraftStep
from export.onnx_export import onnx_from_torch
from export.parity import check_parity
from export.quantize import WEIGHT_FORMATS, quantize_matmuls
from runtime.errors import ExportError


def _step_feeds(spec, top_k: int, past: int, count: int, memory: int, seed: int) -> dict[str, np.ndarray]:
    """Random draft-step inputs (masks hide a few keys, never a whole row)."""
    rng = np.random.default_rng(seed)
    hidden, heads, dim = spec.hidden_size, spec.num_kv_heads, spec.head_dim
    mask = np.zeros((1, 1, count, past + count), dtype=np.float32)
    mask[0, 0, :, : past // 2] = contract.MASK_MIN
    feeds = {"inputs_embeds": rng.standard_normal((1, count, spec.target_hidden_size)).astype(np.float32) * 0.1}
    if spec.interaction == "concat":
        feeds["previous"] = rng.standard_normal((1, count, hidden)).astype(np.float32)
    feeds["position_ids"] = np.arange(past, past + count, dtype=np.int64)
    feeds["self_mask"] = mask
    if spec.interaction == "cross_attention":
        feeds["memory_key"] = rng.standard_normal((1, memory, heads, dim)).astype(np.float32)
        feeds["memory_value"] = rng.standard_normal((1, memory, heads, dim)).astype(np.float32)
        mem_mask = np.zeros((1, 1, count, memory), dtype=np.float32)
        mem_mask[0, 0, :, memory // 2:] = contract.MASK_MIN
        feeds["memory_mask"] = mem_mask
    for b in range(spec.num_layers):
        pk, pv, _, _ = contract.kv_names(b)
        feeds[pk] = rng.standard_normal((1, past, heads, dim)).astype(np.float32)
        feeds[pv] = rng.standard_normal((1, past, heads, dim)).astype(np.float32)
    return feeds


def _reference(module, inputs, outputs):
    def run(feed):
        with torch.no_grad():
            result = module(*[torch.from_numpy(feed[s.name]) for s in inputs])
        result = (result,) if isinstance(result, torch.Tensor) else result
        return {s.name: r.detach().numpy() for s, r in zip(outputs, result, strict=True)}
    return run


def export_draft(model, out: Path, arts, config) -> None:
    """Writes the draft's graphs, tables and manifest section into `out` (see the module docstring)."""
    spec = model.spec
    tree = config.tree
    if tree.top_k > spec.draft_vocab:
        raise ExportError("The tree's top_k exceeds the draft vocabulary.", note=f"{tree.top_k} > {spec.draft_vocab}")
    head_rows = max(tree.scratch_slots, 1)  # bounds a tree level's width (its nodes take distinct slots)
    weights = getattr(config, "draft_weights", "float32")
    if weights not in WEIGHT_FORMATS:
        raise ExportError(f"Unknown draft weight format {weights!r}.", hint=f"use one of {sorted(WEIGHT_FORMATS)}")
    for graph, rows in ((contract.DRAFT_STEP, head_rows), (contract.DRAFT_CHAIN, 1)):
        _export_step(model, out, arts, config, graph, rows)
    if model.feat_in is not None:
        _export_memory(model, out, arts, config.parity)
    _save_tables(model, out, arts)
    arts.sections["draft"] = {
        "spec": spec.to_dict(),
        "scratch_slots": max(tree.scratch_slots, 1),
        "head_rows": head_rows,
        "max_depth": max(tree.depth, 1),
        "top_k": tree.top_k,
        "weights": weights,
    }


def _export_step(model, out: Path, arts, config, graph: str, head_rows: int) -> None:
    """One DraftStep graph with outputs for the last `head_rows` tokens: parity, then quantization."""
    spec, tree = model.spec, config.tree
    step = DraftStep(model, tree.top_k, head_rows).eval()
    inputs, outputs = contract.draft_step_io(spec.num_layers, spec.target_hidden_size, spec.hidden_size,
                                             spec.num_kv_heads, spec.head_dim, spec.interaction, tree.top_k)
    example = _step_feeds(spec, tree.top_k, past=4, count=2, memory=5, seed=0)
    path = onnx_from_torch(step, tuple(torch.from_numpy(example[s.name]) for s in inputs),
                           out / f"{graph}.onnx", inputs, outputs)
    arts.files[graph] = f"{graph}.onnx"
    arts.io_contract[graph] = contract.graph_contract(inputs, outputs)
    if config.parity:  # on the float32 graph: quantization below is a deliberate, recorded change
        long_chain = _step_feeds(spec, tree.top_k, 2, head_rows + 3, 6, 3)  # more tokens than head rows
        feeds = [_step_feeds(spec, tree.top_k, 0, 5, 3, 1), _step_feeds(spec, tree.top_k, 9, 3, 12, 2), long_chain]
        arts.parity[graph] = check_parity(path, _reference(step, inputs, outputs), feeds)
    bits = WEIGHT_FORMATS[getattr(config, "draft_weights", "float32")]
    if bits is not None:
        quantize_matmuls(path, bits, block_size=32, accuracy_level=4)


def _export_memory(model, out: Path, arts, parity: bool) -> None:
    spec = model.spec
    module = DraftMemory(model).eval()
    inputs, outputs = contract.draft_memory_io(spec.feature_dim, spec.hidden_size, spec.num_kv_heads,
                                               spec.head_dim, spec.interaction)
    features = torch.randn(1, 3, spec.feature_dim)
    path = onnx_from_torch(module, (features,), out / "draft_memory.onnx", inputs, outputs)
    arts.files["draft_memory"] = "draft_memory.onnx"
    arts.io_contract[contract.DRAFT_MEMORY] = contract.graph_contract(inputs, outputs)
    if parity:
        rng = np.random.default_rng(4)
        feeds = [{"features": rng.standard_normal((1, m, spec.feature_dim)).astype(np.float32)} for m in (1, 7)]
        arts.parity[contract.DRAFT_MEMORY] = check_parity(path, _reference(module, inputs, outputs), feeds)


def _save_tables(model, out: Path, arts) -> None:
    """The null entries and the vocabulary map as .npy files."""
    tables = {}
    if model.cross is not None:
        tables["draft_null_key"] = model.cross.null_k
        tables["draft_null_value"] = model.cross.null_v
    if model.spec.interaction == "concat":
        tables["draft_null_feature"] = model.null_feature
    if model.d2t is not None:
        tables["draft_d2t"] = model.d2t
    for key, tensor in tables.items():
        array = tensor.detach().cpu().numpy()
        np.save(out / f"{key}.npy", array.astype(np.int64 if key == "draft_d2t" else np.float32))
        arts.files[key] = f"{key}.npy"
