"""Training-time test (EAGLE-3): the teacher-forced pass unrolled on the draft's own features.

At inference a tree node at depth d (position p, root at R = p - d) reads the target features of
positions < R, the root's own draft output, and its ancestors' draft outputs from the earlier tree
steps; it self-attends to the committed stream up to R and to its ancestors' tree K/V. Step k of the
unroll reproduces exactly that for every stream position at once, with the root at p - k:

    self-attention keys  [step 0 (T') | step 1 (T') | ... | step k (T')]
        query p reads step-0 entries at positions <= p - k and step-s entries at position p - k + s
    memory entries       [null | target features (M) | draft step 0 (T') | ... | step k-1 (T')]
        query p reads the null entry, target features at positions < p - k, and draft step-s
        outputs at position p - k + s

Step 0 is the ordinary teacher-forced pass (`DreamDraft.forward`). Tokens stay teacher-forced.
Supported for the "cross_attention" and "none" interactions; EAGLE-style "concat" drafts feed the
previous feature as an input instead and are trained with `steps = 0`.
"""

from __future__ import annotations

import torch

from dream_s_edge.draft.model import DraftOutput, DreamDraft
from runtime.errors import TrainingError


def unrolled_forward(model: DreamDraft, input_embeds: torch.Tensor, features: torch.Tensor,
                     positions: torch.Tensor, steps: int) -> list[DraftOutput]:
    """Runs steps 0 .. `steps` of the training-time test.

    Args:
        model: the draft.
        input_embeds: [B, T', H_t] the stream's inputs.
        features: [B, M, F] target features of positions 0 .. M - 1.
        positions: [T'] int64 increasing absolute positions of the stream.
        steps: unrolled steps after the teacher-forced one.

    Returns:
        steps + 1 DraftOutputs over the T' stream tokens; output k has its root k positions back.

    Raises:
        TrainingError: a "concat" draft with steps > 0.
    """
    if steps > 0 and model.spec.interaction == "concat":
        raise TrainingError("Training-time test is not implemented for 'concat' drafts.",
                            hint="train them with ttt_steps=0")
    B, T, _ = input_embeds.shape
    x = model.input_stream(input_embeds)  # [B, T', H_d]
    target_kv = _target_memory(model, features, B)
    caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    outs: list[DraftOutput] = []
    for k in range(steps + 1):
        caches = _grow(caches, model, B, T, x.dtype, x.device)
        slots = torch.arange(k * T, (k + 1) * T, device=x.device)
        memory_kv = memory_mask = None
        if target_kv is not None:
            memory_kv = _memory(model, target_kv, outs)
            memory_mask = unroll_memory_mask(positions, features.shape[1], k)
        out = model.decode(x, positions, unroll_self_mask(positions, k), memory_kv, memory_mask, caches, slots)
        outs.append(out)
    return outs


def unroll_self_mask(positions: torch.Tensor, k: int) -> torch.Tensor:
    """[T', (k + 1) T'] self-attention mask of step k (see the module docstring)."""
    p = positions[:, None]
    blocks = [positions[None, :] <= p - k]
    blocks += [positions[None, :] == p - k + s for s in range(1, k + 1)]
    return torch.cat(blocks, dim=1)


def unroll_memory_mask(positions: torch.Tensor, num_features: int, k: int) -> torch.Tensor:
    """[T', 1 + M + k T'] memory mask of step k (see the module docstring)."""
    p = positions[:, None]
    null = torch.ones(len(positions), 1, dtype=torch.bool, device=positions.device)
    target = torch.arange(num_features, device=positions.device)[None, :] < p - k
    drafts = [positions[None, :] == p - k + s for s in range(k)]
    return torch.cat([null, target, *drafts], dim=1)


def _target_memory(model: DreamDraft, features: torch.Tensor, batch: int):
    """Cross K/V of [null | target features], or None without cross-attention."""
    if model.cross is None:
        return None
    k, v = model.project_memory(model.memory_from_target(features))
    null_k, null_v = model.cross.null_kv(batch, k.dtype)
    return torch.cat((null_k, k), dim=2), torch.cat((null_v, v), dim=2)


def _memory(model: DreamDraft, target_kv, outs: list[DraftOutput]):
    """Appends the cross K/V of each earlier step's own outputs (feature autoregression)."""
    ks, vs = [target_kv[0]], [target_kv[1]]
    for out in outs:
        k, v = model.project_memory(model.memory_from_draft(out.hidden))
        ks.append(k)
        vs.append(v)
    return torch.cat(ks, dim=2), torch.cat(vs, dim=2)


def _grow(caches, model: DreamDraft, B: int, T: int, dtype, device):
    """Fresh self-attention buffers one step (T' slots) wider, holding the earlier steps' K/V.

    Fresh tensors each step, so writing this step's K/V never modifies a tensor autograd saved.
    """
    spec = model.spec
    blank = torch.zeros(B, spec.num_kv_heads, T, spec.head_dim, dtype=dtype, device=device)
    if caches is None:
        return [(blank.clone(), blank.clone()) for _ in model.blocks]
    return [(torch.cat((k, blank), dim=2), torch.cat((v, blank), dim=2)) for k, v in caches]
