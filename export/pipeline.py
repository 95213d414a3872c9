"""`dream-s-edge export`: a target (and its draft) into an artifact folder the torch-free runtime reads.

Data flow::

    model name --load_target--> TargetAdapter
      -> vision.onnx   (VisionEncoder: pixel_values -> image embeds)         + parity
      -> decoder.onnx  (DecoderStep: embeds, positions, mask, past K/V -> logits, features, new K/V) + parity
      -> embeddings.npy, tokenizer.json, processor settings
      -> draft_step.onnx, draft_memory.onnx, draft_*.npy (export/draft_export.py)  + parity
      -> manifest.json (contracts, limits, tree, sha256 of every file)

The family must be Idefics3 / SmolVLM (the embedded default) for now: its processor is the one the
runtime reproduces in numpy (`runtime/preprocess.py`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export import contract
from export.manifest import write_manifest
from export.onnx_export import onnx_from_torch
from export.parity import check_parity
from export.target_graphs import DecoderStep, VisionEncoder
from runtime.errors import ExportError
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """What `dream-s-edge export` writes."""

    out: Path
    model: str = "default"  # "default" (embedded SmolLM2 VLM) or a local HF folder
    draft: str | None = None  # None (target only), "untrained", or a draft folder
    max_context: int = 1024  # committed tokens the runtime's KV cache holds
    tree: TreeSpec = field(default_factory=lambda: TreeSpec.dynamic(top_k=4, depth=5, node_budget=16))
    feature_layers: tuple[int, ...] = (-1,)  # used without a draft; a draft brings its own
    parity: bool = True  # check every graph against PyTorch (Polygraphy)
    draft_weights: str = "float32"  # draft_step MatMul weights: float32, int8 or int4 (export/quantize.py)
    draft_vocab: int | None = None  # keep the draft's N most frequent tokens (dream_s_edge/draft/vocab_prune.py)


@dataclass
class Artifacts:
    """What the export steps collect for the manifest."""

    files: dict[str, str] = field(default_factory=dict)  # key -> path relative to the folder
    io_contract: dict[str, dict] = field(default_factory=dict)
    parity: dict[str, dict] = field(default_factory=dict)
    sections: dict[str, object] = field(default_factory=dict)  # manifest body sections


def export_artifacts(config: ExportConfig, adapter=None) -> Path:
    """Runs the whole export into `config.out`; returns the folder.

    Args:
        config: what to export.
        adapter: an already loaded target (tests); loaded from `config.model` otherwise, with eager
            attention so the traced graph holds plain ops.

    Raises:
        ExportError: an unsupported family, a failed export or a parity failure.
    """
    from dream_s_edge.generation import load_model

    adapter = adapter if adapter is not None else load_model_eager(config.model, load_model)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    arts = Artifacts()
    draft_model = None
    feature_layers = config.feature_layers
    if config.draft is not None:
        from dream_s_edge.runners.draft_factory import load_draft_model

        draft_model = load_draft_model(adapter, config.draft).float().eval()
        if config.draft_vocab is not None:
            draft_model = pruned_draft(draft_model, config.draft, config.draft_vocab)
        feature_layers = draft_model.spec.feature_layers
    export_target(adapter, out, arts, feature_layers, config)
    if draft_model is not None:
        from export.draft_export import export_draft

        export_draft(draft_model, out, arts, config)
    body = {
        **arts.sections,
        "limits": {"max_context": config.max_context, "node_budget": config.tree.node_budget},
        "tree": tree_dict(config.tree),
        "io_contract": arts.io_contract,
        "parity": arts.parity,
    }
    write_manifest(out, body, arts.files)
    return out


def pruned_draft(model, folder: str, size: int):
    """`model` with its draft vocabulary cut to the `size` tokens its training data counts most."""
    from dream_s_edge.draft.vocab_prune import load_token_counts, prune_vocabulary
    from dream_s_edge.runners.draft_factory import UNTRAINED

    if str(folder) == UNTRAINED:
        raise ExportError("--draft-vocab needs a trained draft, whose folder holds its token counts.",
                          hint="pass --draft DIR, or drop --draft-vocab")
    return prune_vocabulary(model, load_token_counts(folder, model.spec.target_vocab_size), size).eval()


def load_model_eager(name: str, load_model):
    """Loads the target with eager attention (plain matmul/softmax in the traced graph)."""
    from dream_s_edge.targets import load_target

    if name == "default":
        from dream_s_edge.embedded import ensure_default_target

        return load_target(ensure_default_target(), attn_implementation="eager")
    return load_target(Path(name), attn_implementation="eager")


def source_model_dir(adapter) -> str | None:
    """The local folder the target was loaded from (absolute), or None when unknown."""
    name = getattr(getattr(adapter.model, "config", None), "_name_or_path", None)
    return str(Path(name).resolve()) if name and Path(name).is_dir() else None


def tree_dict(tree: TreeSpec) -> dict:
    """The manifest's tree section."""
    return tree.to_dict()


def export_target(adapter, out: Path, arts: Artifacts, feature_layers: tuple[int, ...], config: ExportConfig) -> None:
    """Writes the target's graphs, embedding table, tokenizer and processor settings into `out`."""
    if adapter.spec.family != "smolvlm":
        raise ExportError(f"ONNX export supports the smolvlm (Idefics3) family only, not {adapter.spec.family}.",
                          hint="export the embedded default (--model default) or a SmolVLM folder")
    spec = adapter.spec
    layers = tuple(spec.num_layers if i == -1 else int(i) for i in feature_layers)
    with torch.no_grad():
        table = adapter.text_embedding().weight.detach().float().numpy()
    np.save(out / "embeddings.npy", table)
    arts.files["embeddings"] = "embeddings.npy"
    _export_decoder(adapter, out, arts, layers, config.parity, config.tree.node_budget)
    processor = processor_section(adapter, out)
    tokens_per_image = _export_vision(adapter, out, arts, processor["image"]["max_image_size"], config.parity)
    arts.files["tokenizer"] = processor["tokenizer_file"]
    arts.sections["processor"] = processor
    arts.sections["feature_layers"] = list(layers)
    arts.sections["target"] = {
        "family": spec.family,
        "num_layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "image_token_id": spec.image_token_id,
        "eos_token_ids": list(spec.eos_token_ids),
        "tokens_per_image": tokens_per_image,
        "source_model": source_model_dir(adapter),  # where `dream-s-edge bench` finds the PyTorch model
    }
    arts.sections["vocab"] = {"target_vocab_size": spec.vocab_size, "embedding_rows": int(table.shape[0])}


def _decoder_feeds(spec, past: int, count: int, seed: int) -> dict[str, np.ndarray]:
    """Random decoder inputs with `past` committed slots and a tree-like mask over `count` new tokens."""
    rng = np.random.default_rng(seed)
    block = np.tril(np.ones((count, count), dtype=bool))
    if count > 2:
        block[count - 1, 1:count - 1] = False  # a second branch under node 0
    mask = np.zeros((1, 1, count, past + count), dtype=np.float32)
    mask[0, 0, :, past:][~block] = contract.MASK_MIN
    feeds = {
        "inputs_embeds": rng.standard_normal((1, count, spec.hidden_size)).astype(np.float32) * 0.5,
        "position_ids": (past + block.sum(1) - 1)[None].astype(np.int64),
        "attention_mask": mask,
    }
    for i in range(spec.num_layers):
        pk, pv, _, _ = contract.kv_names(i)
        shape = (1, past, spec.num_kv_heads, spec.head_dim)
        feeds[pk] = rng.standard_normal(shape).astype(np.float32)
        feeds[pv] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _torch_reference(module, inputs, outputs):
    """feeds -> {output name: array} by running `module` on the inputs in contract order."""
    def run(feed):
        args = [torch.from_numpy(feed[s.name]) for s in inputs]
        with torch.no_grad():
            result = module(*args)
        result = (result,) if isinstance(result, torch.Tensor) else result
        return {s.name: r.detach().float().numpy() for s, r in zip(outputs, result, strict=True)}
    return run


def _export_decoder(adapter, out: Path, arts: Artifacts, layers: tuple[int, ...], parity: bool,
                    logits_rows: int) -> None:
    spec = adapter.spec
    module = DecoderStep(adapter, layers, logits_rows).eval()
    inputs, outputs = contract.decoder_io(spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_dim,
                                          spec.vocab_size, spec.hidden_size * len(layers))
    example = _decoder_feeds(spec, past=3, count=2, seed=0)
    args = tuple(torch.from_numpy(example[s.name]) for s in inputs)
    path = onnx_from_torch(module, args, out / "decoder.onnx", inputs, outputs)
    arts.files["decoder"] = "decoder.onnx"
    arts.io_contract[contract.DECODER] = contract.graph_contract(inputs, outputs)
    if parity:
        # a verify-sized step, a tree after a past, and a prefill longer than the logits rows
        feeds = [_decoder_feeds(spec, 0, 6, 1), _decoder_feeds(spec, 7, 4, 2),
                 _decoder_feeds(spec, 0, logits_rows + 3, 5)]
        # fp32 rounding grows with depth (~1e-3 on 30-layer logits from random inputs), hence 1e-2.
        arts.parity[contract.DECODER] = check_parity(path, _torch_reference(module, inputs, outputs), feeds,
                                                     atol=1e-2, rtol=1e-2)


def _export_vision(adapter, out: Path, arts: Artifacts, size: int, parity: bool) -> int:
    """Exports the vision graph; returns the visual tokens per image."""
    module = VisionEncoder(adapter).eval()
    pixels = torch.randn(1, 3, size, size)
    with torch.no_grad():
        tokens = int(module(pixels).shape[1])
    inputs, outputs = contract.vision_io(size, tokens, adapter.spec.hidden_size)
    path = onnx_from_torch(module, (pixels,), out / "vision.onnx", inputs, outputs)
    arts.files["vision"] = "vision.onnx"
    arts.io_contract[contract.VISION] = contract.graph_contract(inputs, outputs)
    if parity:
        rng = np.random.default_rng(3)
        feeds = [{"pixel_values": rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32)} for n in (1, 2)]
        arts.parity[contract.VISION] = check_parity(path, _torch_reference(module, inputs, outputs), feeds)
    return tokens


def processor_section(adapter, out: Path) -> dict:
    """Copies the tokenizer and returns the manifest's processor section (Idefics3 processor)."""
    processor = adapter.processor
    tokenizer = processor.tokenizer
    images = processor.image_processor
    if getattr(images, "do_image_splitting", False):
        raise ExportError("Image splitting is not supported by the runtime's preprocessing.",
                          hint="export a SmolVLM whose image processor has do_image_splitting=false")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    expansion = (processor.fake_image_token + processor.global_image_tag
                 + processor.image_token * processor.image_seq_len + processor.fake_image_token)
    template = processor.chat_template
    if template is None:
        raise ExportError("The target's processor has no chat template.")
    return {
        "kind": "idefics3",
        "tokenizer_file": "tokenizer.json",
        "chat_template": template,
        "bos_token": tokenizer.bos_token,
        "image_placeholder": processor.image_token,
        "image_expansion": expansion,
        "image": {
            "longest_edge": int(images.size["longest_edge"]),
            "max_image_size": int(images.max_image_size["longest_edge"]),
            "resample": int(images.resample),
            "rescale_factor": float(images.rescale_factor),
            "image_mean": [float(x) for x in images.image_mean],
            "image_std": [float(x) for x in images.image_std],
        },
    }


def copy_if_exists(src: Path, dst: Path) -> None:
    """Copies a file when it exists (optional extras)."""
    if src.is_file():
        shutil.copyfile(src, dst)
