"""DREAM's gated cross-attention block: the draft stream reads the target's feature memory.

    h = x + tanh(g_a) * XAttn(norm(x), S)
    y = h + tanh(g_m) * MLP(norm(h))

Q comes from the draft stream, K/V from the feature memory S (projected once per memory entry and
cached by runners), with per-head RMSNorm on Q and K, no rope, and the softmax in fp32. Gates start
at 0, so the block starts as the identity. Fix to the reference: a learned null key/value sits at
memory slot 0 and every query may read it, so query 0 (which may read no feature under the one-step
shift) attends to something defined instead of averaging future features.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.draft.blocks import RMSNorm, SwiGLU, attend, merge_heads, split_heads
from dream_s_edge.draft.spec import DraftSpec


class GatedCrossAttention(nn.Module):
    """Gated cross-attention + gated SwiGLU over a memory of width H_d."""

    def __init__(self, spec: DraftSpec):
        super().__init__()
        H, D = spec.hidden_size, spec.head_dim
        self.num_heads, self.num_kv_heads = spec.num_heads, spec.num_kv_heads
        self.norm = RMSNorm(H, spec.rms_norm_eps)
        self.q_proj = nn.Linear(H, self.num_heads * D, bias=False)
        self.k_proj = nn.Linear(H, self.num_kv_heads * D, bias=False)
        self.v_proj = nn.Linear(H, self.num_kv_heads * D, bias=False)
        self.o_proj = nn.Linear(self.num_heads * D, H, bias=False)
        self.q_norm = RMSNorm(D, spec.rms_norm_eps)
        self.k_norm = RMSNorm(D, spec.rms_norm_eps)
        # Learned null key/value, already in normalized key space: memory slot 0 of every query.
        self.null_k = nn.Parameter(torch.randn(self.num_kv_heads, D) * 0.02)
        self.null_v = nn.Parameter(torch.zeros(self.num_kv_heads, D))
        self.gate_attn = nn.Parameter(torch.zeros(()))
        self.gate_mlp = nn.Parameter(torch.zeros(()))
        self.mlp_norm = RMSNorm(H, spec.rms_norm_eps)
        self.mlp = SwiGLU(H, spec.ffn_size)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projects memory vectors [B, M, H_d] to (k, v), each [B, Hkv, M, D]."""
        k = self.k_norm(split_heads(self.k_proj(memory), self.num_kv_heads))
        v = split_heads(self.v_proj(memory), self.num_kv_heads)
        return k, v

    def null_kv(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The null entry as (k, v), each [B, Hkv, 1, D]."""
        k = self.null_k.to(dtype)[None, :, None, :].expand(batch, -1, -1, -1)
        v = self.null_v.to(dtype)[None, :, None, :].expand(batch, -1, -1, -1)
        return k, v

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor):
        """Reads the memory entries the mask allows.

        Args:
            x: [B, n, H_d] draft stream.
            memory_kv: (k, v), each [B, Hkv, S, D], null entry at slot 0.
            mask: [n, S] bool, True at slot 0 and at the entries each query may read (the one-step
                shift, and in a tree the root and ancestors only).

        Returns:
            [B, n, H_d].
        """
        q = self.q_norm(split_heads(self.q_proj(self.norm(x)), self.num_heads))  # [B, H, n, D]
        k, v = memory_kv
        attn = self.o_proj(merge_heads(attend(q, k, v, mask)))
        h = x + torch.tanh(self.gate_attn).to(x.dtype) * attn
        return h + torch.tanh(self.gate_mlp).to(x.dtype) * self.mlp(self.mlp_norm(h))
