"""The one I/O contract between the exported graphs and the runtime: names, order, dtypes, axes.

Everything that crosses from export to runtime is named here, by functions, and written into
`manifest.json` (`io_contract`); the runtime reads the names back from the manifest and never spells
one itself. Each tensor carries a `role` (what it is; the runtime looks tensors up by role) and,
for per-layer tensors, a `layer`. Symbolic axes: `past` (committed slots P handed to the graph), `new`
(tokens T of this step), `rows` (logits rows, min(new, node_budget)), `head_rows` (draft output
rows, min(new, the draft section's head_rows)), `images`, `memory` (feature-memory entries M), `k` (top-k).

Graphs and their tensors, in order (L target layers, B draft blocks, Hkv/D per model)::

    vision        in   pixel_values      float32 [images, 3, size, size]
                  out  image_embeds      float32 [images, tokens_per_image, H]
    decoder       in   inputs_embeds     float32 [1, new, H]
                       position_ids      int64   [1, new]
                       attention_mask    float32 [1, 1, new, past + new]   additive: 0 or -3.4e38
                       past_key.{i}      float32 [1, past, Hkv, D]         i = 0 .. L-1, then
                       past_value.{i}    float32 [1, past, Hkv, D]         interleaved k, v per layer
                  out  logits            float32 [1, rows, V]              rows = min(new, node_budget): the
                                                                           last tokens' logits only
                       features          float32 [1, new, F]               F = H * len(feature_layers)
                       present_key.{i}   float32 [1, new, Hkv, D]          K/V of the new tokens only
                       present_value.{i} float32 [1, new, Hkv, D]
    draft_step    in   inputs_embeds     float32 [1, new, H]               token embeddings (target table)
                       previous          float32 [1, new, Hd]              "concat" drafts only
                       position_ids      int64   [new]
                       self_mask         float32 [1, 1, new, past + new]   additive
                       memory_key        float32 [1, memory, Hkv, D]       "cross_attention" only
                       memory_value      float32 [1, memory, Hkv, D]
                       memory_mask       float32 [1, 1, new, memory]       additive
                       past_key.{b}      float32 [1, past, Hkv, D]         b = 0 .. B-1
                       past_value.{b}    float32 [1, past, Hkv, D]
                  out  topk_logprobs     float32 [head_rows, K]            log-softmax, best first, of the
                                                                           last head_rows tokens; K is the
                                                                           tree's top_k, fixed at export
                       topk_ids          int64   [head_rows, K]            draft-vocabulary ids
                       memory_out_key    float32 [1, head_rows, Hkv, D]    this step's own feature memory
                       memory_out_value  float32 [1, head_rows, Hkv, D]    ("cross_attention"), or
                       memory_out        float32 [1, head_rows, Hd]        ("concat"); none for "none"
                       present_key.{b}   float32 [1, new, Hkv, D]
                       present_value.{b} float32 [1, new, Hkv, D]
    draft_memory  in   features          float32 [1, memory, F]            target features
                  out  memory_out_key / memory_out_value, or memory_out   as in draft_step
    draft_chain   draft_step's tensors, with head_rows = min(new, 1): the same weights for the runtime's
                  chains (prefill, advance), which read only their last row (optional)

KV layout: slot-major `[1, slots, Hkv, D]`. The runtime keeps one buffer per layer `[S, Hkv, D]`
(S = max_context + node_budget) and hands the graph its first P slots by pointer, a contiguous
prefix, so nothing is copied in; the graph attends over those P slots followed by the T new tokens
(mask columns in that order) and returns only the new K/V, which the runtime binds straight into
the cache slots P .. P + T - 1 (or scatters into tree scratch slots).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FORMAT_VERSION = 1
MASK_MIN = -3.4028234663852886e38  # float32 min: a hidden key; finite, so a fully hidden row stays finite

VISION = "vision"
DECODER = "decoder"
DRAFT_STEP = "draft_step"
DRAFT_MEMORY = "draft_memory"
DRAFT_CHAIN = "draft_chain"  # draft_step's I/O with head_rows = 1: the runtime's chains (prefill, advance)
GRAPHS = (VISION, DECODER, DRAFT_STEP, DRAFT_MEMORY, DRAFT_CHAIN)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the ONNX tensor name.
        role: what the tensor is, as the runtime looks it up ("past_key", "logits", ...).
        dtype: numpy dtype name.
        shape: ints for fixed axes, strings for symbolic ones.
        layer: the layer (or draft block) of a per-layer tensor, else None.
    """

    name: str
    role: str
    dtype: str
    shape: tuple
    layer: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (shape as a list)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


def kv_names(layer: int) -> tuple[str, str, str, str]:
    """(past_key, past_value, present_key, present_value) names of one layer or draft block."""
    return f"past_key.{layer}", f"past_value.{layer}", f"present_key.{layer}", f"present_value.{layer}"


def _kv(layers: int, heads: int, dim: int, present: bool) -> list[TensorSpec]:
    """Interleaved k, v specs of every layer (past or present)."""
    axis = "new" if present else "past"
    prefix = "present" if present else "past"
    specs = []
    for i in range(layers):
        names = kv_names(i)
        k, v = (names[2], names[3]) if present else (names[0], names[1])
        specs.append(TensorSpec(k, f"{prefix}_key", "float32", (1, axis, heads, dim), i))
        specs.append(TensorSpec(v, f"{prefix}_value", "float32", (1, axis, heads, dim), i))
    return specs


def vision_io(image_size: int, tokens_per_image: int, hidden: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the vision encoder + connector graph."""
    inputs = [TensorSpec("pixel_values", "pixel_values", "float32", ("images", 3, image_size, image_size))]
    outputs = [TensorSpec("image_embeds", "image_embeds", "float32", ("images", tokens_per_image, hidden))]
    return inputs, outputs


def decoder_io(
    layers: int, hidden: int, heads: int, dim: int, vocab: int, feature_dim: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the target decoder step."""
    inputs = [
        TensorSpec("inputs_embeds", "inputs_embeds", "float32", (1, "new", hidden)),
        TensorSpec("position_ids", "position_ids", "int64", (1, "new")),
        TensorSpec("attention_mask", "attention_mask", "float32", (1, 1, "new", "past + new")),
        *_kv(layers, heads, dim, present=False),
    ]
    outputs = [
        TensorSpec("logits", "logits", "float32", (1, "rows", vocab)),
        TensorSpec("features", "features", "float32", (1, "new", feature_dim)),
        *_kv(layers, heads, dim, present=True),
    ]
    return inputs, outputs


def _memory_outputs(interaction: str, heads: int, dim: int, width: int, axis: str) -> list[TensorSpec]:
    """The feature-memory outputs of a draft graph for one interaction."""
    if interaction == "cross_attention":
        return [
            TensorSpec("memory_out_key", "memory_out_key", "float32", (1, axis, heads, dim)),
            TensorSpec("memory_out_value", "memory_out_value", "float32", (1, axis, heads, dim)),
        ]
    if interaction == "concat":
        return [TensorSpec("memory_out", "memory_out", "float32", (1, axis, width))]
    return []


def draft_step_io(
    blocks: int, target_hidden: int, hidden: int, heads: int, dim: int, interaction: str, top_k: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the draft step graph."""
    inputs = [TensorSpec("inputs_embeds", "inputs_embeds", "float32", (1, "new", target_hidden))]
    if interaction == "concat":
        inputs.append(TensorSpec("previous", "previous", "float32", (1, "new", hidden)))
    inputs += [
        TensorSpec("position_ids", "position_ids", "int64", ("new",)),
        TensorSpec("self_mask", "self_mask", "float32", (1, 1, "new", "past + new")),
    ]
    if interaction == "cross_attention":
        inputs += [
            TensorSpec("memory_key", "memory_key", "float32", (1, "memory", heads, dim)),
            TensorSpec("memory_value", "memory_value", "float32", (1, "memory", heads, dim)),
            TensorSpec("memory_mask", "memory_mask", "float32", (1, 1, "new", "memory")),
        ]
    inputs += _kv(blocks, heads, dim, present=False)
    outputs = [
        TensorSpec("topk_logprobs", "topk_logprobs", "float32", ("head_rows", top_k)),
        TensorSpec("topk_ids", "topk_ids", "int64", ("head_rows", top_k)),
        *_memory_outputs(interaction, heads, dim, hidden, "head_rows"),
        *_kv(blocks, heads, dim, present=True),
    ]
    return inputs, outputs


def draft_memory_io(
    feature_dim: int, hidden: int, heads: int, dim: int, interaction: str
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the graph that turns target features into draft feature memory."""
    inputs = [TensorSpec("features", "features", "float32", (1, "memory", feature_dim))]
    return inputs, _memory_outputs(interaction, heads, dim, hidden, "memory")


def names(specs: list[TensorSpec]) -> list[str]:
    """The names of specs, in order (what torch.onnx.export takes)."""
    return [s.name for s in specs]


def dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes for specs: every symbolic axis by name."""
    axes = {}
    for spec in specs:
        symbolic = {i: str(d).replace(" ", "") for i, d in enumerate(spec.shape) if isinstance(d, str)}
        if symbolic:
            axes[spec.name] = symbolic
    return axes


def graph_contract(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict:
    """The manifest entry of one graph: {"inputs": [...], "outputs": [...]}."""
    return {"inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]}
