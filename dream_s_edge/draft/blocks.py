"""Building blocks of the draft: RMSNorm, rope, masked attention, SwiGLU and the decoder block.

Every attention in the draft goes through `attend`, which takes an explicit boolean mask over keys,
so the teacher-forced pass (causal mask) and the runner's cached and tree steps (masks over
preallocated buffers, see `masks.py`) run the same arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.draft.spec import DraftSpec


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in at least fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        y = x.to(compute)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(compute)).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """Rope tables for absolute positions.

    Args:
        positions: [n] int64 absolute positions.
        head_dim: D (even).
        theta: rope base.
        dtype: dtype of the tensors the tables rotate.

    Returns:
        (cos, sin), each [n, D] in `dtype` (HF rotate-half layout).
    """
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=compute) / head_dim)
    freqs = positions.to(compute)[:, None] * inv_freq[None, :]  # [n, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [n, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int | None = None) -> torch.Tensor:
    """Rotates x [B, H, n, D] by the tables cos/sin [n, D].

    half: D // 2 as a Python int, so a traced graph splits at a constant (None: read from x's shape).
    """
    half = x.shape[-1] // 2 if half is None else half
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked multi-head attention with GQA and the softmax in at least fp32.

    Query head h reads key/value head h // (H / Hkv) (the HF `repeat_kv` layout); the query groups
    are folded into the query axis, so the K/V buffers are never copied per head.

    Args:
        q: [B, H, n, D] queries.
        k: [B, Hkv, S, D] keys; H is a multiple of Hkv.
        v: [B, Hkv, S, D] values.
        mask: [n, S] bool, True where a query may read a key. Every row must hold at least one True
            (callers guarantee it: self-attention sees itself, cross-attention the null key).

    Returns:
        [B, H, n, D] in q's dtype.
    """
    B, H, n, D = q.shape
    groups = H // k.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    q = q.reshape(B, k.shape[1], groups * n, D)  # [B, Hkv, g * n, D]
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * D**-0.5  # [B, Hkv, g * n, S]
    scores = scores.masked_fill(~mask.repeat(groups, 1), float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.matmul(probs, v.to(compute))  # [B, Hkv, g * n, D]
    return out.reshape(B, H, n, D).to(q.dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, n, heads * D] -> [B, heads, n, D]."""
    B, n, _ = x.shape
    return x.view(B, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, n, D] -> [B, n, heads * D]."""
    B, heads, n, D = x.shape
    return x.transpose(1, 2).reshape(B, n, heads * D)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inner, bias=False)
        self.up_proj = nn.Linear(dim, inner, bias=False)
        self.down_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    """RoPE self-attention whose keys/values may live in a preallocated cache."""

    def __init__(self, spec: DraftSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads, D = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.hidden_size, self.num_heads * D, bias=False)
        self.k_proj = nn.Linear(spec.hidden_size, self.num_kv_heads * D, bias=False)
        self.v_proj = nn.Linear(spec.hidden_size, self.num_kv_heads * D, bias=False)
        self.o_proj = nn.Linear(self.num_heads * D, spec.hidden_size, bias=False)

    def forward(self, x, rope, mask, cache=None, slots=None):
        """Attends n new tokens to the keys the mask allows.

        Args:
            x: [B, n, H_d] normalized input.
            rope: (cos, sin), each [n, D], at the tokens' absolute positions.
            mask: [n, n] without a cache, else [n, S] over the cache's slots.
            cache: None, or (k, v) buffers [B, Hkv, S, D]; the new K/V are written at `slots`
                first, so a token sees itself and anything earlier in the buffer.
            slots: [n] int64 cache slots of the new tokens (with a cache).

        Returns:
            [B, n, H_d].
        """
        cos, sin = rope
        q = apply_rope(split_heads(self.q_proj(x), self.num_heads), cos, sin)  # [B, H, n, D]
        k = apply_rope(split_heads(self.k_proj(x), self.num_kv_heads), cos, sin)  # [B, Hkv, n, D]
        v = split_heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k_buf, v_buf = cache
            k_buf.index_copy_(2, slots, k.to(k_buf.dtype))
            v_buf.index_copy_(2, slots, v.to(v_buf.dtype))
            k, v = k_buf, v_buf
        return self.o_proj(merge_heads(attend(q, k, v, mask)))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: h = x + Attn(norm(x)); y = h + MLP(norm(h)).

    The first block of the draft has no input norm: its input is the raw token embedding (DREAM,
    EAGLE).
    """

    def __init__(self, spec: DraftSpec, first: bool):
        super().__init__()
        self.input_norm = nn.Identity() if first else RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.attn = SelfAttention(spec)
        self.post_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = SwiGLU(spec.hidden_size, spec.ffn_size)

    def forward(self, x, rope, mask, cache=None, slots=None):
        """x [B, n, H_d] -> [B, n, H_d]; see `SelfAttention.forward` for the rest."""
        h = x + self.attn(self.input_norm(x), rope, mask, cache, slots)
        return h + self.mlp(self.post_norm(h))
