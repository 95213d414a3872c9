"""The DREAM draft: decoder blocks around a gated cross-attention block over target features.

Data flow of one pass (H_t target width, H_d draft width, F feature width, V_d draft vocabulary)::

    input embeds [B, n, H_t] --input_stream--> x [B, n, H_d]          (concat: fc(emb, previous feature))
    x --decoder blocks (rope self-attn) / gated cross-attn after block c--> [B, n, H_d]
      --final norm--> hidden [B, n, H_d] --proj_out--> features [B, n, H_t] --shared LM head--> logits

Target features enter as memory vectors `memory_from_target(f)` [B, M, H_d]; inside a tree the draft's
own outputs stand in for them through `memory_from_draft(hidden)` (feature autoregression). The
one-step shift: draft position p holds token x_p and reads the features of positions 0 .. p - 1.

`forward` is the teacher-forced pass over a whole sequence (training); runners call `input_stream`
and `decode` with masks over preallocated buffers (`runners/draft_torch.py`). Both share `decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dream_s_edge.draft.blocks import DecoderBlock, RMSNorm, rope_cos_sin
from dream_s_edge.draft.cross_attention import GatedCrossAttention
from dream_s_edge.draft.masks import causal_mask, shifted_memory_mask
from dream_s_edge.draft.spec import DraftSpec
from runtime.errors import SpecMismatchError


@dataclass
class DraftOutput:
    """Outputs of one draft pass over n tokens.

    Attributes:
        hidden: [B, n, H_d] final-normed draft stream (input of `memory_from_draft`).
        features: [B, n, H_t] the draft's prediction of the target's last-layer feature.
        logits: [B, n, V_d] over the draft vocabulary (map ids with `DreamDraft.d2t`).
        early: [B, n, H_t] output of decoder block `spec.early_feature_block` (intermediate loss).
    """

    hidden: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor
    early: torch.Tensor


def build_vocab_map(token_counts, size: int) -> torch.Tensor:
    """Draft -> target id map of the `size` most frequent target tokens (EAGLE-3's d2t).

    Args:
        token_counts: [V] counts (tensor, array or list) of each target token in the training data.
        size: V_d, entries to keep.

    Returns:
        [V_d] int64 target ids in ascending order; ties go to the lower id.
    """
    counts = torch.as_tensor(token_counts, dtype=torch.float64).flatten()
    if not 1 <= size <= counts.numel():
        raise SpecMismatchError(
            "The draft vocabulary must be between 1 and the target vocabulary.",
            f"size={size}, target vocabulary={counts.numel()}",
        )
    order = torch.sort(-counts, stable=True).indices[:size]
    return torch.sort(order).values


def _linear_or_identity(d_in: int, d_out: int) -> nn.Module:
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)


class DreamDraft(nn.Module):
    """A DREAM / EAGLE-style draft over a frozen, shared target embedding and LM head.

    Args:
        spec: the architecture.
        embed_weight: [V, H_t] the target's token embedding (kept as a frozen, unsaved buffer).
        lm_head_weight: [V, H_t] the target's LM head (frozen, unsaved buffer).
        d2t: [V_d] int64 draft -> target id map when `spec.draft_vocab_size` is set (see
            `build_vocab_map`), else None.

    Raises:
        SpecMismatchError: shared weights or the id map disagree with the spec.
    """

    def __init__(self, spec: DraftSpec, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor,
                 d2t: torch.Tensor | None = None):
        super().__init__()
        _check_shared(spec, embed_weight, lm_head_weight, d2t)
        self.spec = spec
        H_t, H_d = spec.target_hidden_size, spec.hidden_size
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)
        self.register_buffer("lm_head_weight", lm_head_weight.detach(), persistent=False)
        self.register_buffer("d2t", None if d2t is None else d2t.detach().long().clone())
        # LM head rows of the draft vocabulary [V_d, H_t], cached (not saved) when d2t is set.
        self.register_buffer("draft_head", None, persistent=False)
        self._refresh_draft_head()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_draft_head())

        self.embed_in = _linear_or_identity(H_t, H_d) if spec.interaction != "concat" else None
        self.feat_in = _linear_or_identity(spec.feature_dim, H_d) if spec.interaction != "none" else None
        if spec.interaction == "concat":
            self.fc_in = nn.Linear(H_t + H_d, H_d, bias=False)
            self.null_feature = nn.Parameter(torch.zeros(H_d))  # previous feature of position 0
        self.blocks = nn.ModuleList(DecoderBlock(spec, first=i == 0) for i in range(spec.num_layers))
        self.cross = GatedCrossAttention(spec) if spec.interaction == "cross_attention" else None
        self.final_norm = RMSNorm(H_d, spec.rms_norm_eps)
        self.proj_out = _linear_or_identity(H_d, H_t)
        self.early_out = _linear_or_identity(H_d, H_t)

    def _refresh_draft_head(self) -> None:
        """Recomputes the cached LM head rows of the draft vocabulary after d2t changes."""
        if self.d2t is not None:
            self.draft_head = self.lm_head_weight.index_select(0, self.d2t.to(self.lm_head_weight.device))

    @property
    def output_head(self) -> torch.Tensor:
        """[V_d, H_t] the LM head restricted to the draft vocabulary (the full head without d2t)."""
        return self.lm_head_weight if self.d2t is None else self.draft_head

    # ---- inputs ---------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] (target vocabulary) -> shared embeddings [..., H_t]."""
        return nn.functional.embedding(input_ids, self.embed_weight)

    def memory_from_target(self, features: torch.Tensor) -> torch.Tensor:
        """Target features [B, M, F] -> memory vectors [B, M, H_d]."""
        return self.feat_in(features)

    def memory_from_draft(self, hidden: torch.Tensor) -> torch.Tensor:
        """The draft's own outputs [B, n, H_d] -> memory vectors [B, n, H_d] (feature autoregression).

        With one feature layer the draft's predicted target feature takes the target's path, so it
        stands in for the target exactly; with several (EAGLE-3) no target-space stand-in exists and
        the draft's hidden state is used directly, as EAGLE-3 does.
        """
        if len(self.spec.feature_layers) == 1:
            return self.feat_in(self.proj_out(hidden))
        return hidden

    def input_stream(self, embeds: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Input of block 0.

        Args:
            embeds: [B, n, H_t] token embeddings (or the target's layer-0 inputs).
            previous: [B, n, H_d] memory vector of each token's previous position ("concat" only).

        Returns:
            [B, n, H_d].
        """
        if self.spec.interaction == "concat":
            return self.fc_in(torch.cat((embeds, previous.to(embeds.dtype)), dim=-1))
        return self.embed_in(embeds)

    def previous_memory(self, memory: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced "concat" input: the memory vector of position p - 1 for each query p.

        Args:
            memory: [B, M, H_d] memory vectors of positions 0 .. M - 1.
            positions: [n] int64 query positions, each <= M.

        Returns:
            [B, n, H_d]; the learned null feature for position 0.
        """
        null = self.null_feature.to(memory.dtype).expand(memory.shape[0], 1, -1)
        table = torch.cat((null, memory), dim=1)  # [B, 1 + M, H_d]; index p = position p - 1
        return table[:, positions]

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory vectors [B, M, H_d] -> cross-attention (k, v), each [B, Hkv, M, D]."""
        return self.cross.project_memory(memory)

    # ---- the pass -------------------------------------------------------------------------
    def decode(self, x, positions, self_mask, memory_kv=None, memory_mask=None, cache=None, slots=None):
        """Runs the blocks and the head over n tokens.

        Args:
            x: [B, n, H_d] output of `input_stream`.
            positions: [n] int64 absolute positions (rope).
            self_mask: [n, n] without a cache, else [n, S_self] over the cache's slots.
            memory_kv: cross-attention (k, v), each [B, Hkv, M, D] with the null entry at 0.
            memory_mask: [n, M] bool over memory entries.
            cache: None, or one (k, v) pair of [B, Hkv, S_self, D] buffers per decoder block.
            slots: [n] int64 cache slots the tokens' K/V are written to.

        Returns:
            DraftOutput.
        """
        rope = rope_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta, x.dtype)
        early = x
        for i, block in enumerate(self.blocks):
            x = block(x, rope, self_mask, None if cache is None else cache[i], slots)
            if i == self.spec.early_feature_block:
                early = x
            if self.cross is not None and i == self.spec.cross_attention_position:
                x = self.cross(x, memory_kv, memory_mask)
        hidden = self.final_norm(x)
        features = self.proj_out(hidden)
        logits = nn.functional.linear(features, self.output_head.to(features.dtype))
        return DraftOutput(hidden=hidden, features=features, logits=logits, early=self.early_out(early))

    def forward(self, input_embeds: torch.Tensor, features: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> DraftOutput:
        """Teacher-forced pass over a whole (possibly VTC-pruned) sequence.

        Args:
            input_embeds: [B, T, H_t] the draft's input stream (token embeddings, or the target's
                layer-0 inputs at the prompt).
            features: [B, M, F] target features of positions 0 .. M - 1 (unused for "none").
            positions: [T] int64 absolute positions of the stream, increasing (default 0 .. T-1;
                under VTC the kept positions). Position p reads features 0 .. p - 1.

        Returns:
            DraftOutput over the T stream tokens.
        """
        B, T, _ = input_embeds.shape
        device = input_embeds.device
        positions = torch.arange(T, device=device) if positions is None else positions.to(device)
        memory = None if self.feat_in is None else self.memory_from_target(features)
        previous = self.previous_memory(memory, positions) if self.spec.interaction == "concat" else None
        x = self.input_stream(input_embeds, previous)
        memory_kv = memory_mask = None
        if self.cross is not None:
            k, v = self.project_memory(memory)
            null_k, null_v = self.cross.null_kv(B, k.dtype)
            memory_kv = (torch.cat((null_k, k), dim=2), torch.cat((null_v, v), dim=2))
            memory_mask = shifted_memory_mask(positions, 1 + memory.shape[1])
        return self.decode(x, positions, causal_mask(T, device=device), memory_kv, memory_mask)


def _check_shared(spec: DraftSpec, embed_weight, lm_head_weight, d2t) -> None:
    """Refuses shared weights or an id map that disagree with the spec."""
    expected = (spec.target_vocab_size, spec.target_hidden_size)
    for name, weight in (("embedding", embed_weight), ("LM head", lm_head_weight)):
        if tuple(weight.shape) != expected:
            raise SpecMismatchError(
                f"The target's {name} does not match the draft spec.",
                f"target {name} shape={tuple(weight.shape)}, draft expects [V, H_t]={list(expected)}",
                "load the draft with the target it was trained for",
            )
    want = spec.draft_vocab_size
    got = None if d2t is None else int(d2t.numel())
    if want != got:
        raise SpecMismatchError(
            "The draft -> target id map does not match draft_vocab_size.",
            f"draft_vocab_size={want}, d2t entries={got}",
            "build one with build_vocab_map(token_counts, draft_vocab_size), or none for the full vocabulary",
        )
    if d2t is not None and (int(d2t.min()) < 0 or int(d2t.max()) >= spec.target_vocab_size):
        raise SpecMismatchError(
            "The draft -> target id map holds ids outside the target vocabulary.",
            f"ids in [{int(d2t.min())}, {int(d2t.max())}], target_vocab_size={spec.target_vocab_size}",
        )
