"""`TorchDraftRunner`: a `DreamDraft` behind `runtime.runner.DraftRunner`, over preallocated buffers.

Buffers (batch 1, allocated once in the constructor; C = max_context, S = scratch slots). The
scratch area comes first, so the entries in use are always a prefix and each step attends over a
view of that prefix (see `draft/masks.py`):

  [1] self-attention K/V, one pair per decoder block, [1, Hkv, S + C + 1, D]: S scratch slots for
      tree nodes, then the committed stream at S + j (root included; fewer slots than positions
      under VTC).
  [2] feature memory, width M = S + 2 + C: entry 0 the learned null, entries 1 + s the output
      features of tree nodes in scratch slot s (feature autoregression), entry S + 1 the root's own
      output feature, entry S + 2 + j the target feature of position j. "cross_attention" keeps
      the projected cross K/V [1, Hkv, M, D]; "concat" keeps the memory vectors [1, M, H_d];
      "none" keeps none.

The one-step shift: position p reads memory entries of positions < p. The root at position P reads
target features 0 .. P - 1; a tree node at depth d reads those, the root's output feature and its
ancestors' output features, never its own. Nodes given to one `tree_step` must not be ancestors of
each other (the loop feeds one depth level per call).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dream_s_edge.draft.masks import causal_mask, shifted_memory_mask, tree_memory_mask, tree_self_mask
from dream_s_edge.draft.model import DraftOutput, DreamDraft
from dream_s_edge.draft.spec import TargetDims, check_target
from dream_s_edge.draft.vtc import select_kept
from runtime.errors import CapacityError, SpecMismatchError
from runtime.runner import PrefillResult, Proposal, RunnerLimits

logger = logging.getLogger(__name__)


class TorchDraftRunner:
    """Runs a DreamDraft for the speculative loop (implements `runtime.runner.DraftRunner`).

    Args:
        model: the draft (its dtype and device are used for every buffer).
        target: dimensions of the target it runs with; a draft for another target is refused.
        max_context: committed target tokens (prompt plus answer) the buffers hold.
        scratch_slots: S, tree nodes the scratch area holds (reported as `limits.node_budget`,
            which the loop reads as the draft's scratch slot count).
        max_depth: deepest tree node below the root a `tree_step` accepts.

    Raises:
        SpecMismatchError: the draft was built for a target with other dimensions.
    """

    padded_steps = False  # eager PyTorch takes any width: a tree level runs on its real nodes only

    def __init__(self, model: DreamDraft, target: TargetDims, max_context: int, scratch_slots: int,
                 max_depth: int):
        check_target(model.spec, target)
        if max_context < 1 or scratch_slots < 0 or max_depth < 1:
            raise CapacityError(
                "A draft runner needs max_context >= 1, scratch_slots >= 0 and max_depth >= 1.",
                f"max_context={max_context}, scratch_slots={scratch_slots}, max_depth={max_depth}",
            )
        self.model = model.eval()
        self.spec = model.spec
        self.limits = RunnerLimits(max_context=max_context, node_budget=scratch_slots, max_depth=max_depth)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # Layout: self slots [scratch | committed], memory entries [null | scratch | root | features].
        self._self_committed = scratch_slots  # slot of committed position 0
        self._mem_root = scratch_slots + 1
        self._mem_features = scratch_slots + 2  # entry of position 0's feature
        self._allocate()
        self.reset()

    # ---- buffers and state ----------------------------------------------------------------
    def _allocate(self) -> None:
        spec, kw = self.spec, {"device": self.device, "dtype": self.dtype}
        self_width = self._self_committed + self.limits.max_context + 1
        mem_width = self._mem_features + self.limits.max_context
        kv_shape = (1, spec.num_kv_heads, self_width, spec.head_dim)
        self._cache = [(torch.zeros(kv_shape, **kw), torch.zeros(kv_shape, **kw)) for _ in self.model.blocks]
        self._cross_kv = None
        self._memory = None
        if spec.interaction == "cross_attention":
            shape = (1, spec.num_kv_heads, mem_width, spec.head_dim)
            self._cross_kv = (torch.zeros(shape, **kw), torch.zeros(shape, **kw))
        elif spec.interaction == "concat":
            self._memory = torch.zeros(1, mem_width, spec.hidden_size, **kw)
        # Host-side state: committed self slots, root position, position of each written scratch slot.
        self._n_self = 0
        self._root_pos = -1
        self._scratch_pos = np.full(self.limits.node_budget, -1, dtype=np.int64)

    @torch.no_grad()
    def reset(self) -> None:
        """Forgets the committed tokens; keeps every buffer (and refreshes the null entry)."""
        self._n_self = 0
        self._root_pos = -1
        self._scratch_pos[:] = -1
        if self._cross_kv is not None:
            null_k, null_v = self.model.cross.null_kv(1, self.dtype)
            self._cross_kv[0][:, :, :1] = null_k
            self._cross_kv[1][:, :, :1] = null_v
        if self._memory is not None:
            self._memory[0, 0] = self.model.null_feature.to(self.dtype)

    @property
    def length(self) -> int:
        """Committed positions (prompt plus accepted tokens plus the root); 0 before prefill."""
        return self._root_pos + 1

    # ---- the DraftRunner interface --------------------------------------------------------
    @torch.no_grad()
    def prefill(self, result: PrefillResult, input_ids: np.ndarray, root: int, top_k: int) -> Proposal:
        """Consumes the target's prefill and the first root token; commits T + 1 positions.

        Draft position i < T consumes `result.inputs_embeds[i]` (token embedding if None) and reads
        features 0 .. i - 1; VTC drops the least-attended visual positions from this stream only.
        Position T is the root. Returns the root's top-k continuations, [1, K].
        """
        ids = self._ids(input_ids)  # [T]
        T = int(ids.numel())
        self._check_features(result.features, T, "prefill")
        if not 1 <= T <= self.limits.max_context:
            raise CapacityError("The prompt does not fit the draft's buffers.",
                                f"T={T}, max_context={self.limits.max_context}")
        self.reset()
        kept = self._kept_positions(result, T)  # [T']
        embeds = self._prompt_embeds(result, ids)[kept]  # [T', H_t]
        root_embed = self.model.embed(self._ids([root])).to(self.dtype)
        embeds = torch.cat((embeds, root_embed), dim=0)  # [T' + 1, H_t], assembled once per prompt
        positions = torch.cat((kept, torch.tensor([T], device=self.device)))  # [T' + 1]
        self._write_target_features(result.features, start=0)
        out = self._chain(embeds, positions, last=T)
        self._set_root(T, out)
        return self._proposal(out.logits[0, -1:], top_k)

    @torch.no_grad()
    def advance(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> Proposal:
        """Consumes A tokens (accepted nodes, then the new root) and the target features [A, F] of
        the old root and the accepted nodes; commits A positions and clears the scratch area.
        Returns the new root's top-k continuations, [1, K]."""
        self._require_prefill("advance")
        ids = self._ids(tokens)  # [A]
        old_root = self._root_pos
        new_root = old_root + int(ids.numel())
        self._check_features(features, int(ids.numel()), "advance")
        if ids.numel() < 1 or new_root > self.limits.max_context:
            raise CapacityError("Advancing the draft goes beyond its buffers.",
                                f"root position {old_root} + A={ids.numel()} > max_context={self.limits.max_context}")
        self._write_target_features(features, start=old_root)
        positions = torch.arange(old_root + 1, new_root + 1, device=self.device)  # [A]
        out = self._chain(self.model.embed(ids), positions, last=new_root)
        self._set_root(new_root, out)
        return self._proposal(out.logits[0, -1:], top_k)

    @torch.no_grad()
    def tree_step(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray,
                  tree_mask: np.ndarray, top_k: int) -> Proposal:
        """Consumes n tree nodes below the root, produces their top-k continuations [n, K].

        Each node reads the committed cache, the root, and the scratch slots its mask row marks
        (self-attention includes the node itself; the feature memory holds the root's and its
        ancestors' outputs, not its own). Its K/V and output feature go to scratch slot `slots[i]`.

        Raises:
            CapacityError: slots, mask width or depth beyond the buffers.
            SpecMismatchError: a mask row that reads a slot not written in this round, or a node
                of the same call.
        """
        self._require_prefill("tree_step")
        pos_np, slot_np, tree_np = self._check_tree(positions, slots, tree_mask)
        ancestors_np = tree_np.copy()
        ancestors_np[np.arange(len(slot_np)), slot_np] = False
        tree = torch.as_tensor(tree_np, device=self.device)
        ancestors = torch.as_tensor(ancestors_np, device=self.device)
        slot_t = torch.as_tensor(slot_np, device=self.device)
        pos_t = torch.as_tensor(pos_np, device=self.device)
        previous = None
        if self._memory is not None:
            entries = torch.as_tensor(self._parent_entries(pos_np, ancestors_np), device=self.device)
            previous = self._memory[:, entries]  # [1, n, H_d]
        x = self.model.input_stream(self.model.embed(self._ids(tokens)).to(self.dtype)[None], previous)
        self_mask = tree_self_mask(tree, self._n_self)  # [n, S + committed]
        mem_mask = tree_memory_mask(ancestors, self._root_pos)  # [n, S + 2 + P]
        out = self.model.decode(x, pos_t, self_mask, self._cross_view(mem_mask.shape[1]), mem_mask,
                                self._cache_view(self_mask.shape[1]), slot_t)
        self._write_draft_features(out.hidden, 1 + slot_t)
        self._scratch_pos[slot_np] = pos_np
        return self._proposal(out.logits[0], top_k)

    # ---- internals ------------------------------------------------------------------------
    def _chain(self, embeds: torch.Tensor, positions: torch.Tensor, last: int) -> DraftOutput:
        """Commits a chain of n tokens: embeds [n, H_t] at increasing positions [n] ending at `last`."""
        n, start, offset = int(positions.numel()), self._n_self, self._self_committed
        slots = torch.arange(offset + start, offset + start + n, device=self.device)
        previous = None
        if self._memory is not None:  # feature of position p - 1, the null feature for p = 0
            entries = torch.where(positions > 0, positions + self._mem_features - 1, 0)
            previous = self._memory[:, entries]  # [1, n, H_d]
        x = self.model.input_stream(embeds.to(self.dtype)[None], previous)
        self_mask = causal_mask(n, start=start, offset=offset, device=self.device)  # [n, S + start + n]
        mem_mask = shifted_memory_mask(positions, self._mem_features + last, self._mem_features)
        out = self.model.decode(x, positions, self_mask, self._cross_view(mem_mask.shape[1]), mem_mask,
                                self._cache_view(self_mask.shape[1]), slots)
        self._n_self += n
        return out

    def _cache_view(self, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `width` self-attention slots of every block's buffers (views, no copy)."""
        return [(k[:, :, :width], v[:, :, :width]) for k, v in self._cache]

    def _cross_view(self, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first `width` feature-memory entries of the cross K/V buffers (views, no copy)."""
        if self._cross_kv is None:
            return None
        return self._cross_kv[0][:, :, :width], self._cross_kv[1][:, :, :width]

    def _set_root(self, position: int, out: DraftOutput) -> None:
        """Records the new root and stores its own output feature; clears the scratch area."""
        self._root_pos = position
        self._scratch_pos[:] = -1
        self._write_draft_features(out.hidden[:, -1:], torch.tensor([self._mem_root], device=self.device))

    def _write_memory(self, entries: torch.Tensor, vectors: torch.Tensor) -> None:
        """Writes memory vectors [1, m, H_d] at memory entries [m] (projected for cross-attention)."""
        if self._cross_kv is not None:
            k, v = self.model.project_memory(vectors)
            self._cross_kv[0].index_copy_(2, entries, k)
            self._cross_kv[1].index_copy_(2, entries, v)
        elif self._memory is not None:
            self._memory.index_copy_(1, entries, vectors)

    def _write_target_features(self, features: np.ndarray, start: int) -> None:
        """Target features [m, F] of positions start .. start + m - 1 -> memory entries."""
        if self.model.feat_in is None:
            return
        f = torch.as_tensor(np.asarray(features), device=self.device).to(self.dtype)[None]  # [1, m, F]
        first = self._mem_features + start
        entries = torch.arange(first, first + f.shape[1], device=self.device)
        self._write_memory(entries, self.model.memory_from_target(f))

    def _write_draft_features(self, hidden: torch.Tensor, entries: torch.Tensor) -> None:
        """The draft's own outputs hidden [1, m, H_d] -> memory entries [m] (feature autoregression)."""
        if self.model.feat_in is not None:
            self._write_memory(entries, self.model.memory_from_draft(hidden))

    def _parent_entries(self, positions: np.ndarray, ancestors: np.ndarray) -> np.ndarray:
        """Memory entry of each node's parent output ("concat"): the deepest ancestor, else the root."""
        entries = np.full(len(positions), self._mem_root, dtype=np.int64)
        for i, row in enumerate(ancestors):
            anc = np.flatnonzero(row)
            if anc.size:
                parent = anc[np.argmax(self._scratch_pos[anc])]
                entries[i] = 1 + parent
        return entries

    def _kept_positions(self, result: PrefillResult, T: int) -> torch.Tensor:
        """[T'] prompt positions of the draft's input stream (all of them unless VTC applies)."""
        ratio = self.spec.visual_keep_ratio
        if ratio >= 1.0 or result.visual_mask is None:
            return torch.arange(T, device=self.device)
        if result.visual_scores is None:
            logger.warning("visual_keep_ratio=%s but the target gave no visual scores; keeping all", ratio)
            return torch.arange(T, device=self.device)
        return select_kept(result.visual_scores, result.visual_mask, ratio).to(self.device)

    def _prompt_embeds(self, result: PrefillResult, ids: torch.Tensor) -> torch.Tensor:
        """[T, H_t] the target's layer-0 input, or the token embeddings when the target gave none."""
        if result.inputs_embeds is None:
            return self.model.embed(ids).to(self.dtype)
        embeds = torch.as_tensor(np.asarray(result.inputs_embeds), device=self.device).to(self.dtype)
        want = (ids.numel(), self.spec.target_hidden_size)
        if tuple(embeds.shape) != want:
            raise SpecMismatchError("The target's inputs_embeds do not fit the draft.",
                                    f"inputs_embeds shape={tuple(embeds.shape)}, draft expects {want}")
        return embeds

    def _proposal(self, logits: torch.Tensor, top_k: int) -> Proposal:
        """Top-k of logits [n, V_d] as target ids and log-probs, [n, K]."""
        if not 1 <= top_k <= logits.shape[-1]:
            raise CapacityError("top_k exceeds the draft vocabulary.",
                                f"top_k={top_k}, draft vocabulary={logits.shape[-1]}")
        logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        values, index = logprobs.topk(top_k, dim=-1)
        ids = index if self.model.d2t is None else self.model.d2t[index]
        return Proposal(token_ids=ids.cpu().numpy().astype(np.int64),
                        logprobs=values.cpu().numpy().astype(np.float32))

    def _ids(self, tokens) -> torch.Tensor:
        return torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(-1), device=self.device)

    def _require_prefill(self, what: str) -> None:
        if self._root_pos < 0:
            raise SpecMismatchError(f"{what} called before prefill.", hint="call prefill first")

    def _check_features(self, features: np.ndarray, rows: int, what: str) -> None:
        want = (rows, self.spec.feature_dim)
        if tuple(np.shape(features)) != want:
            raise SpecMismatchError(
                f"The target features given to {what} do not fit the draft.",
                f"features shape={tuple(np.shape(features))}, draft expects {want} "
                f"(feature_layers={self.spec.feature_layers})",
            )

    def _check_tree(self, positions, slots, tree_mask):
        """Validates one tree step's inputs; returns positions [n], slots [n], mask [n, S] (numpy)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        slot = np.asarray(slots, dtype=np.int64).reshape(-1)
        mask = np.asarray(tree_mask, dtype=bool)
        S, n = self.limits.node_budget, len(slot)
        if mask.ndim != 2 or mask.shape[0] != n or len(pos) != n or mask.shape[1] > S:
            raise CapacityError("The tree step does not fit the draft's scratch area.",
                                f"slots {n}, positions {len(pos)}, tree_mask {mask.shape}, scratch slots {S}")
        if n and (slot.min() < 0 or slot.max() >= S or len(np.unique(slot)) != n):
            raise CapacityError("Tree slots must be distinct and inside the scratch area.",
                                f"slots={slot.tolist()}, scratch slots={S}")
        depth = pos - self._root_pos
        if n and (depth.min() < 1 or depth.max() > self.limits.max_depth):
            raise CapacityError("A tree node lies deeper than the draft's buffers allow (or above the root).",
                                f"depths={depth.tolist()}, max_depth={self.limits.max_depth}")
        full = np.zeros((n, S), dtype=bool)
        full[:, : mask.shape[1]] = mask
        full[np.arange(n), slot] = True
        self._check_ancestors(full, slot, pos)
        return pos, slot, full

    def _check_ancestors(self, tree: np.ndarray, slot: np.ndarray, pos: np.ndarray) -> None:
        """Every ancestor a row marks must be a node written earlier this round, above the node."""
        ancestors = tree.copy()
        ancestors[np.arange(len(slot)), slot] = False
        rows, cols = np.nonzero(ancestors)
        anc_pos = self._scratch_pos[cols]
        bad = (anc_pos < 0) | (anc_pos >= pos[rows]) | np.isin(cols, slot)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SpecMismatchError(
                "A tree mask row reads a scratch slot that holds no ancestor of the node.",
                f"node {rows[i]} (slot {slot[rows[i]]}, position {pos[rows[i]]}) reads slot {cols[i]} "
                f"(position {anc_pos[i]}, -1 = not written this round)",
                "feed one depth level per tree_step, ancestors first",
            )
