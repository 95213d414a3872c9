"""Torch modules that trace into the draft's ONNX graphs: one draft step, and target features -> memory.

Place in the data flow: `DreamDraft` -> `DraftStep` / `DraftMemory` -> `torch.onnx.export`
(`export/draft_export.py`) -> `draft_step.onnx` / `draft_memory.onnx`.

`DraftStep` runs `DreamDraft.decode` arithmetic over the contract's layout (`export/contract.py`):
self-attention over slot-major past K/V `[1, P, Hkv, D]` followed by the step's own K/V, additive
masks instead of boolean ones, and it returns only the new K/V. The blocks' own submodules are
called (projections, norms, MLPs, rope), so a trained draft exports as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.draft.blocks import apply_rope, rope_cos_sin

# The helpers below restate `blocks.split_heads` / `merge_heads` / `attend` for the
# exported batch of 1 with every size but the token axes as a Python int. Traced, they become
# Reshape/Slice/Tile nodes with constant operands instead of Shape -> Gather -> Concat chains
# (about a hundred small nodes per draft step that onnxruntime cannot fold, since n is dynamic);
# `apply_rope` takes its split point as an int for the same reason.


def _split(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """[1, n, heads * dim] -> [1, heads, n, dim]."""
    return x.reshape(1, -1, heads, dim).transpose(1, 2)


def _merge(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """[1, heads, n, dim] -> [1, n, heads * dim]."""
    return x.transpose(1, 2).reshape(1, -1, heads * dim)


def attend_additive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, heads: int,
                    kv_heads: int, dim: int) -> torch.Tensor:
    """`blocks.attend` with an additive mask [1, 1, n, S] (0 visible, float32 min hidden).

    q [1, H, n, D], k/v [1, Hkv, S, D] -> [1, H, n, D]; query groups fold into the query axis (GQA).
    """
    groups = heads // kv_heads
    q = q.reshape(1, kv_heads, -1, dim).float()  # [1, Hkv, g * n, D]
    scores = torch.matmul(q, k.float().transpose(-1, -2)) * dim**-0.5  # [1, Hkv, g * n, S]
    scores = scores + mask[0, 0].repeat(groups, 1)
    out = torch.matmul(scores.softmax(dim=-1), v.float())
    return out.reshape(1, heads, -1, dim)


def _block_step(block, x, cos, sin, mask, past_k, past_v, rows: int | None = None):
    """One decoder block over n new tokens; returns (y [1, r, H_d], k, v [1, n, Hkv, D]).

    K/V are always computed for all n tokens (the cache needs them); with `rows`, the queries,
    the attention output and the MLP only for the last r = min(n, rows) tokens (a Slice, which
    clamps), so a block whose output only feeds the head skips the other rows.
    """
    attn = block.attn
    H, Hkv = attn.num_heads, attn.num_kv_heads
    D = attn.k_proj.out_features // Hkv  # Python ints: constants in the traced graph
    h_in = block.input_norm(x)
    k = apply_rope(_split(attn.k_proj(h_in), Hkv, D), cos, sin, D // 2)  # [1, Hkv, n, D]
    v = _split(attn.v_proj(h_in), Hkv, D)
    if rows is not None:
        x, h_in, cos, sin, mask = x[:, -rows:], h_in[:, -rows:], cos[-rows:], sin[-rows:], mask[:, :, -rows:]
    q = apply_rope(_split(attn.q_proj(h_in), H, D), cos, sin, D // 2)
    keys = torch.cat((past_k.transpose(1, 2), k), dim=2)
    values = torch.cat((past_v.transpose(1, 2), v), dim=2)
    h = x + attn.o_proj(_merge(attend_additive(q, keys, values, mask, H, Hkv, D), H, D))
    y = h + block.mlp(block.post_norm(h))
    return y, k.transpose(1, 2), v.transpose(1, 2)


def _cross_step(cross, x, memory_k, memory_v, mask):
    """The gated cross-attention block with an additive memory mask; memory K/V [1, M, Hkv, D]."""
    H, Hkv = cross.num_heads, cross.num_kv_heads
    D = cross.k_proj.out_features // Hkv
    q = cross.q_norm(_split(cross.q_proj(cross.norm(x)), H, D))
    keys, values = memory_k.transpose(1, 2), memory_v.transpose(1, 2)
    attn = cross.o_proj(_merge(attend_additive(q, keys, values, mask, H, Hkv, D), H, D))
    h = x + torch.tanh(cross.gate_attn) * attn
    return h + torch.tanh(cross.gate_mlp) * cross.mlp(cross.mlp_norm(h))


def _memory(model, vectors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Memory vectors [1, m, H_d] -> the contract's memory outputs for the draft's interaction."""
    if model.spec.interaction == "cross_attention":
        k, v = model.project_memory(vectors)
        return k.transpose(1, 2), v.transpose(1, 2)  # [1, m, Hkv, D]
    if model.spec.interaction == "concat":
        return (vectors,)
    return ()


class DraftStep(nn.Module):
    """One draft pass over n tokens (chain or one tree level), in contract order.

    Args:
        model: the DreamDraft (float32, eval).
        top_k: K, the continuations returned per token.
        head_rows: top-k and feature-memory outputs only for the last min(new, head_rows) tokens
            (the last block's queries and MLP too): a tree level needs every row, a chain (prefill,
            advance) only its last, so a prompt-long prefill skips the head over the prompt. The
            export sets it to the scratch slot count, which bounds a tree level's width.
            None: every row.
    """

    def __init__(self, model, top_k: int, head_rows: int | None = None):
        super().__init__()
        self.model = model
        self.top_k = top_k
        self.head_rows = head_rows
        self.interaction = model.spec.interaction

    def forward(self, *inputs):
        model, spec = self.model, self.model.spec
        inputs = list(inputs)
        embeds = inputs.pop(0)
        previous = inputs.pop(0) if self.interaction == "concat" else None
        positions, self_mask = inputs.pop(0), inputs.pop(0)
        memory_k = memory_v = memory_mask = None
        if self.interaction == "cross_attention":
            memory_k, memory_v, memory_mask = inputs.pop(0), inputs.pop(0), inputs.pop(0)
        x = model.input_stream(embeds, previous)
        cos, sin = rope_cos_sin(positions, spec.head_dim, spec.rope_theta, x.dtype)
        presents = []
        last = len(model.blocks) - 1
        for i, block in enumerate(model.blocks):
            rows = self.head_rows if i == last else None  # nothing after the last block needs the other rows
            x, k, v = _block_step(block, x, cos, sin, self_mask, inputs[2 * i], inputs[2 * i + 1], rows)
            presents += [k, v]
            if model.cross is not None and i == spec.cross_attention_position:
                if rows is not None:
                    memory_mask = memory_mask[:, :, -rows:]
                x = _cross_step(model.cross, x, memory_k, memory_v, memory_mask)
        hidden = model.final_norm(x)
        logits = nn.functional.linear(model.proj_out(hidden), model.output_head)  # [1, n, V_d]
        logprobs, ids = torch.log_softmax(logits.float(), dim=-1)[0].topk(self.top_k, dim=-1)
        memory = _memory(model, model.memory_from_draft(hidden)) if model.feat_in is not None else ()
        return (logprobs, ids, *memory, *presents)


class DraftMemory(nn.Module):
    """Target features [1, m, F] -> the draft's feature memory (projected K/V, or vectors)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return _memory(self.model, self.model.memory_from_target(features))
