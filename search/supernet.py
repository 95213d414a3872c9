"""The DREAM-S supernet: one weight-sharing DREAM draft whose sub-networks are slices of its tensors.

Place in the data flow::

    DraftSpec (largest) --Supernet--> reorder_by_importance (once, after phase 1)
        --> forward(choice, ...) for sandwich training (search/sandwich.py)
        --> tau_estimate / search over SubnetChoice --> extract_subnet(choice) -> standalone DreamDraft

Weight sharing is by *slicing*, never copying: after `reorder_by_importance` has permuted every
attention's KV groups (with their query heads) and every SwiGLU's channels so that the most
important come first, a sub-network's tensors are leading blocks (`w[:rows, :cols]`, views) of the
supernet's. A sub-network's loss therefore sends gradient into the shared tensors (the reference
copied pruned weights, which then got none, and kept the least important heads).

Elastic dimensions (`SubnetChoice`): head keep ratio (KV groups with their query heads; the head
width D stays, so the attention width becomes heads x D), FFN width fraction (decoder blocks and
the cross-attention block's MLP), number of decoder blocks (truncated), the injection layer (which
target hidden state feeds the memory; the memory projection is shared across layers), the
visual-token keep ratio and the draft vocabulary (most frequent target tokens first; no weights:
the LM head is the target's), and the interaction type (one branch per type: cross-attention and
concatenation share no tensors).

Importance: by default a KV group's score is the L2 norm of its heads' columns of the output
projection and an FFN channel's is |down column| x |up row|; with `accumulate_taylor` after each
backward of phase 1, the first-order Taylor estimate |sum grad * weight| of the loss change when a
group or channel is removed, summed over steps. Reordering is a function-preserving permutation of
the full network, so phase 1's largest network computes the same after it; given the optimizer, it
permutes the optimizer's per-element state (AdamW moments) the same way, so training goes on with
one optimizer across the phase switch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dream_s_edge.distill.unroll import unrolled_forward
from dream_s_edge.draft.model import DraftOutput, DreamDraft
from dream_s_edge.draft.spec import DraftSpec, DraftSpecError

HEAD_RATIOS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SubnetChoice:
    """One sub-network of the supernet (one point of the DREAM-S search space).

    Attributes:
        interaction: the branch, "cross_attention" (DREAM) or "concat" (EAGLE-3 style).
        num_layers: decoder blocks kept (the first ones).
        head_ratio: share of attention heads kept (KV groups with their query heads).
        ffn_ratio: share of SwiGLU channels kept.
        feature_layer: target hidden state (HF index) that feeds the draft's memory.
        visual_keep_ratio: share of visual tokens the draft keeps at prefill (no weights).
        draft_vocab_size: reduced draft vocabulary (most frequent tokens), None = full vocabulary.
    """

    interaction: str = "cross_attention"
    num_layers: int = 2
    head_ratio: float = 1.0
    ffn_ratio: float = 1.0
    feature_layer: int = -1
    visual_keep_ratio: float = 1.0
    draft_vocab_size: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SubnetChoice:
        return cls(**data)


@dataclass(frozen=True)
class SearchSpace:
    """The candidate values of each elastic dimension; the grid is their product.

    Attributes:
        interactions: branches of the supernet.
        num_layers: decoder block counts (the largest is the supernet's depth).
        head_ratios: head keep ratios; each must give whole KV groups.
        ffn_ratios: FFN width fractions.
        feature_layers: candidate injection layers (HF indices, e.g. the target's last 5).
        visual_keep_ratios: visual-token keep ratios.
        draft_vocab_sizes: draft vocabulary sizes (None = full).
    """

    interactions: tuple[str, ...] = ("cross_attention",)
    num_layers: tuple[int, ...] = (1, 2)
    head_ratios: tuple[float, ...] = HEAD_RATIOS
    ffn_ratios: tuple[float, ...] = (0.5, 1.0)
    feature_layers: tuple[int, ...] = (-1,)
    visual_keep_ratios: tuple[float, ...] = (1.0,)
    draft_vocab_sizes: tuple[int | None, ...] = (None,)

    @classmethod
    def for_target(cls, target_num_layers: int, last: int = 5, **overrides) -> SearchSpace:
        """A space whose injection layers are the target's last `last` hidden states."""
        layers = tuple(range(max(1, target_num_layers - last + 1), target_num_layers + 1))
        return cls(**{"feature_layers": layers, **overrides})

    def _axes(self) -> list[tuple]:
        return [self.interactions, self.num_layers, self.head_ratios, self.ffn_ratios, self.feature_layers,
                self.visual_keep_ratios, self.draft_vocab_sizes]

    def choices(self) -> list[SubnetChoice]:
        """Every point of the grid, in a fixed order."""
        return [SubnetChoice(*values) for values in itertools.product(*self._axes())]

    def largest(self, interaction: str | None = None) -> SubnetChoice:
        """The biggest network of a branch (default: the first), injection at the last candidate layer."""
        return SubnetChoice(interaction or self.interactions[0], max(self.num_layers), max(self.head_ratios),
                            max(self.ffn_ratios), self.feature_layers[-1], max(self.visual_keep_ratios),
                            _largest_vocab(self.draft_vocab_sizes))

    def smallest(self, interaction: str | None = None) -> SubnetChoice:
        """The smallest network of a branch, reading the same layer as `largest`."""
        return SubnetChoice(interaction or self.interactions[0], min(self.num_layers), min(self.head_ratios),
                            min(self.ffn_ratios), self.feature_layers[-1], min(self.visual_keep_ratios),
                            _smallest_vocab(self.draft_vocab_sizes))


def _largest_vocab(sizes) -> int | None:
    return None if None in sizes else max(sizes)


def _smallest_vocab(sizes) -> int | None:
    numbers = [s for s in sizes if s is not None]
    return min(numbers) if numbers else None


class Supernet(nn.Module):
    """The largest DREAM draft of each interaction branch, over the target's shared embedding and head.

    Args:
        spec: the largest architecture (its interaction is replaced per branch; its feature layer
            by the choice's).
        embed_weight: [V, H_t] the target's embedding (shared, frozen).
        lm_head_weight: [V, H_t] the target's LM head (shared, frozen).
        interactions: branches to build.
        token_counts: [V] training-data token counts that order the draft vocabulary (None: by id).
    """

    def __init__(self, spec: DraftSpec, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor,
                 interactions=("cross_attention",), token_counts=None):
        super().__init__()
        base = dataclasses.replace(spec, draft_vocab_size=None, feature_layers=(spec.target_num_layers,),
                                   attention_head_dim=spec.head_dim)
        self.spec = base
        self.branches = nn.ModuleDict(
            {name: DreamDraft(dataclasses.replace(base, interaction=name), embed_weight, lm_head_weight)
             for name in interactions})
        counts = torch.zeros(spec.target_vocab_size) if token_counts is None else torch.as_tensor(token_counts)
        # [V] target ids, most frequent first (ties to the lower id): the prefix of size V_d is the draft vocabulary.
        self.register_buffer("vocab_order", torch.sort(-counts.double(), stable=True).indices)
        self._skeletons: dict[SubnetChoice, DreamDraft] = {}
        self._taylor: dict[str, torch.Tensor] = {}  # module path -> accumulated Taylor importance

    # ---- choices -> specs -------------------------------------------------------------------
    def subnet_spec(self, choice: SubnetChoice) -> DraftSpec:
        """The DraftSpec of a sub-network.

        Raises:
            DraftSpecError: the choice does not fit the supernet (depth, whole KV groups, branch).
        """
        base = self.spec
        if choice.interaction not in self.branches:
            raise DraftSpecError(f"The supernet has no {choice.interaction!r} branch.",
                                 hint=f"branches: {sorted(self.branches)}")
        if not 1 <= choice.num_layers <= base.num_layers:
            raise DraftSpecError("SubnetChoice.num_layers is outside the supernet.",
                                 f"got {choice.num_layers}, supernet has {base.num_layers} blocks")
        kv = choice.head_ratio * base.num_kv_heads
        if abs(kv - round(kv)) > 1e-9 or round(kv) < 1:
            raise DraftSpecError("SubnetChoice.head_ratio must keep whole KV groups.",
                                 f"head_ratio={choice.head_ratio}, num_kv_heads={base.num_kv_heads}",
                                 "use a ratio that is a multiple of 1 / num_kv_heads")
        groups = base.num_heads // base.num_kv_heads
        return dataclasses.replace(
            base, interaction=choice.interaction, num_layers=choice.num_layers,
            num_heads=round(kv) * groups, num_kv_heads=round(kv),
            ffn_size=max(1, round(choice.ffn_ratio * base.ffn_size)),
            feature_layers=(choice.feature_layer,), visual_keep_ratio=choice.visual_keep_ratio,
            draft_vocab_size=choice.draft_vocab_size,
            cross_attention_position=min(base.cross_attention_position, choice.num_layers - 1),
            early_feature_block=min(base.early_feature_block, choice.num_layers - 1))

    def d2t(self, choice: SubnetChoice) -> torch.Tensor | None:
        """[V_d] int64 ascending target ids of the choice's draft vocabulary, or None (full)."""
        if choice.draft_vocab_size is None:
            return None
        return torch.sort(self.vocab_order[: choice.draft_vocab_size]).values

    # ---- sliced weights -------------------------------------------------------------------
    def sliced_tensors(self, choice: SubnetChoice) -> dict[str, torch.Tensor]:
        """The sub-network's parameters as leading-block views of the branch's (gradient flows back)."""
        branch = self.branches[choice.interaction]
        full = dict(branch.named_parameters())
        skeleton = self._skeleton(choice)
        return {name: _leading(full[name], p.shape) for name, p in skeleton.named_parameters()}

    def _skeleton(self, choice: SubnetChoice) -> DreamDraft:
        """A shape-only DreamDraft of the choice (meta tensors), cached; `forward` fills it with views."""
        if choice not in self._skeletons:
            spec = self.subnet_spec(choice)
            self._skeletons[choice] = _meta_draft(spec)
        return self._skeletons[choice]

    def _call_tensors(self, choice: SubnetChoice) -> dict[str, torch.Tensor]:
        """Every tensor the choice's skeleton needs: sliced views, the shared embedding and head, d2t."""
        branch = self.branches[choice.interaction]
        tensors = self.sliced_tensors(choice)
        tensors["embed_weight"] = branch.embed_weight
        tensors["lm_head_weight"] = branch.lm_head_weight
        d2t = self.d2t(choice)
        if d2t is not None:
            tensors["d2t"] = d2t
            tensors["draft_head"] = branch.lm_head_weight.index_select(0, d2t)
        return tensors

    def forward(self, choice: SubnetChoice, input_embeds: torch.Tensor, features: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> DraftOutput:
        """Teacher-forced pass of one sub-network (see `DreamDraft.forward`).

        Args:
            choice: the sub-network.
            input_embeds: [B, T, H_t] the draft's input stream.
            features: [B, M, H_t] the target's hidden state `choice.feature_layer` at positions 0 .. M-1.
            positions: [T] int64 absolute positions (default 0 .. T-1).

        Returns:
            DraftOutput; logits are over the choice's draft vocabulary [B, T, V_d].
        """
        return torch.func.functional_call(self._skeleton(choice), self._call_tensors(choice),
                                          (input_embeds, features, positions), strict=False)

    def unrolled(self, choice: SubnetChoice, input_embeds: torch.Tensor, features: torch.Tensor,
                 positions: torch.Tensor, steps: int) -> list[DraftOutput]:
        """Steps 0 .. `steps` of the training-time test of one sub-network (`distill.unroll`).

        Args:
            choice: the sub-network.
            input_embeds: [B, T, H_t] the draft's input stream.
            features: [B, M, H_t] the target's hidden state `choice.feature_layer` at positions 0 .. M-1.
            positions: [T] int64 absolute positions of the stream.
            steps: unrolled steps after the teacher-forced one (0: `forward` alone).

        Returns:
            steps + 1 DraftOutputs over the T stream tokens, as `unrolled_forward` returns them.
        """
        if steps == 0:
            return [self(choice, input_embeds, features, positions)]
        tensors = {f"draft.{name}": t for name, t in self._call_tensors(choice).items()}
        return torch.func.functional_call(_Unrolled(self._skeleton(choice), steps), tensors,
                                          (input_embeds, features, positions), strict=False)

    # ---- importance -----------------------------------------------------------------------
    def _elastic_modules(self):
        """(path, attention or SwiGLU module) of every branch, in a fixed order."""
        for name, branch in self.branches.items():
            for i, block in enumerate(branch.blocks):
                yield f"{name}.blocks.{i}.attn", block.attn
                yield f"{name}.blocks.{i}.mlp", block.mlp
            if branch.cross is not None:
                yield f"{name}.cross", branch.cross
                yield f"{name}.cross.mlp", branch.cross.mlp

    @torch.no_grad()
    def accumulate_taylor(self) -> None:
        """Adds this step's first-order (Taylor) importance |sum grad * weight| per KV group and channel.

        Call after `backward` and before `zero_grad`; `reorder_by_importance("taylor")` uses the sums.
        """
        for path, module in self._elastic_modules():
            is_mlp = hasattr(module, "down_proj")
            if (module.down_proj if is_mlp else module.o_proj).weight.grad is None:  # unused this step
                continue
            score = _taylor_ffn(module) if is_mlp else _taylor_heads(module, self.spec.head_dim)
            self._taylor[path] = self._taylor.get(path, 0) + score.abs()

    @torch.no_grad()
    def reorder_by_importance(self, scores: str = "weight", optimizer: torch.optim.Optimizer | None = None) -> None:
        """Permutes every branch's heads (by KV group) and FFN channels, most important first.

        Args:
            scores: "weight" (L2 norm of each head's output projection, |down| x |up| per channel) or
                "taylor" (the sums of `accumulate_taylor`; weight norms where none were accumulated).
            optimizer: an optimizer over these parameters whose per-element state (tensors of the
                parameter's shape, e.g. AdamW's moments) is permuted with them; None: no optimizer
                state to keep (build the phase-2 optimizer after this call).

        Function-preserving for the largest network. Call it once between phase 1 and phase 2; the
        Taylor sums are cleared, as they follow the old order.
        """
        companions = _optimizer_companions(optimizer)
        for path, module in self._elastic_modules():
            taylor = self._taylor.get(path) if scores == "taylor" else None
            if hasattr(module, "down_proj"):
                _reorder_ffn(module, ffn_importance(module) if taylor is None else taylor, companions)
            else:
                _reorder_heads(module, self.spec.head_dim, head_importance(module, self.spec.head_dim)
                               if taylor is None else taylor, companions)
        self._taylor.clear()

    def importance_state(self) -> dict[str, torch.Tensor]:
        """The accumulated Taylor sums (module path -> scores), for a checkpoint."""
        return {path: scores.detach().cpu().clone() for path, scores in self._taylor.items()}

    def load_importance_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restores `importance_state` output (a resumed phase 1 keeps its sums)."""
        device = self.vocab_order.device
        self._taylor = {path: scores.to(device) for path, scores in state.items()}


class _Unrolled(nn.Module):
    """A draft whose forward is the training-time test unroll (what `functional_call` needs)."""

    def __init__(self, draft: DreamDraft, steps: int):
        super().__init__()
        self.draft = draft
        self.steps = steps

    def forward(self, input_embeds, features, positions) -> list[DraftOutput]:
        return unrolled_forward(self.draft, input_embeds, features, positions, self.steps)


def _leading(tensor: torch.Tensor, shape) -> torch.Tensor:
    """The leading block of `tensor` with `shape` (a view)."""
    return tensor[tuple(slice(0, n) for n in shape)]


def head_importance(attn: nn.Module, head_dim: int) -> torch.Tensor:
    """[Hkv] L2 norm of each KV group's heads' columns of the output projection."""
    o = attn.o_proj.weight  # [H_d, H * D]
    per_head = o.view(o.shape[0], attn.num_heads, head_dim).pow(2).sum(dim=(0, 2))  # [H]
    return per_head.view(attn.num_kv_heads, -1).sum(-1).sqrt()


def ffn_importance(mlp: nn.Module) -> torch.Tensor:
    """[f] |down column| x |up row| of each SwiGLU channel."""
    return mlp.down_proj.weight.norm(dim=0) * mlp.up_proj.weight.norm(dim=1)


def _taylor_heads(attn: nn.Module, head_dim: int) -> torch.Tensor:
    """[Hkv] sum of grad * weight over each KV group's q, k, v rows and output columns (one step)."""
    def per_head(w: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
        gw = w.grad * w
        return gw.view(heads, head_dim, -1).sum(dim=(1, 2)) if dim == 0 else gw.view(-1, heads, head_dim).sum(dim=(0, 2))

    H, Hkv = attn.num_heads, attn.num_kv_heads
    q = per_head(attn.q_proj.weight, H, 0) + per_head(attn.o_proj.weight, H, 1)  # [H]
    kv = per_head(attn.k_proj.weight, Hkv, 0) + per_head(attn.v_proj.weight, Hkv, 0)  # [Hkv]
    return q.view(Hkv, -1).sum(-1) + kv


def _taylor_ffn(mlp: nn.Module) -> torch.Tensor:
    """[f] sum of grad * weight over each channel's gate and up rows and down column (one step)."""
    rows = sum((w.grad * w).sum(1) for w in (mlp.gate_proj.weight, mlp.up_proj.weight))
    return rows + (mlp.down_proj.weight.grad * mlp.down_proj.weight).sum(0)


def _optimizer_companions(optimizer) -> dict[int, list[torch.Tensor]]:
    """id(parameter) -> the optimizer's state tensors of the parameter's shape (permuted with it)."""
    if optimizer is None:
        return {}
    return {id(p): [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape]
            for p, state in optimizer.state.items()}


def _permute(tensor: torch.Tensor, index: torch.Tensor, dim: int, companions: dict) -> None:
    """Reorders `tensor` (and its optimizer state) along `dim` in place."""
    for t in (tensor, *companions.get(id(tensor), ())):
        t.copy_(t.index_select(dim, index.to(t.device)))


def _reorder_heads(attn: nn.Module, head_dim: int, importance: torch.Tensor, companions: dict) -> None:
    order = torch.argsort(importance, descending=True, stable=True).cpu()  # [Hkv]
    groups = attn.num_heads // attn.num_kv_heads
    heads = (order[:, None] * groups + torch.arange(groups)).flatten()  # [H] query heads, group-major
    q_rows = _rows(heads, head_dim)
    kv_rows = _rows(order, head_dim)
    _permute(attn.q_proj.weight, q_rows, 0, companions)
    _permute(attn.k_proj.weight, kv_rows, 0, companions)
    _permute(attn.v_proj.weight, kv_rows, 0, companions)
    _permute(attn.o_proj.weight, q_rows, 1, companions)
    if hasattr(attn, "null_k"):
        _permute(attn.null_k, order, 0, companions)
        _permute(attn.null_v, order, 0, companions)


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row indices of whole heads: [h] -> [h * D]."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _reorder_ffn(mlp: nn.Module, importance: torch.Tensor, companions: dict) -> None:
    order = torch.argsort(importance, descending=True, stable=True)
    _permute(mlp.gate_proj.weight, order, 0, companions)
    _permute(mlp.up_proj.weight, order, 0, companions)
    _permute(mlp.down_proj.weight, order, 1, companions)


def extract_subnet(supernet: Supernet, choice: SubnetChoice) -> tuple[DraftSpec, dict[str, torch.Tensor]]:
    """Materialises a sub-network as a standalone draft's (spec, state_dict).

    The state dict loads into `DreamDraft(spec, embed, lm_head, state["d2t"])`, whose outputs equal
    `supernet(choice, ...)`; it holds copies (the standalone draft owns its weights).
    """
    spec = supernet.subnet_spec(choice)
    state = {name: t.detach().clone() for name, t in supernet.sliced_tensors(choice).items()}
    d2t = supernet.d2t(choice)
    if d2t is not None:
        state["d2t"] = d2t.clone()
    return spec, state


def build_subnet(supernet: Supernet, choice: SubnetChoice) -> DreamDraft:
    """`extract_subnet` loaded into a DreamDraft on the supernet's device and dtype."""
    spec, state = extract_subnet(supernet, choice)
    branch = supernet.branches[choice.interaction]
    draft = DreamDraft(spec, branch.embed_weight, branch.lm_head_weight, state.get("d2t"))
    draft = draft.to(device=branch.embed_weight.device, dtype=next(branch.parameters()).dtype)
    draft.load_state_dict(state)
    return draft


def param_count(spec: DraftSpec) -> int:
    """Trainable parameters of a draft with `spec` (memory constraint of the search), built on meta."""
    return sum(p.numel() for p in _meta_draft(spec).parameters())


def _meta_draft(spec: DraftSpec) -> DreamDraft:
    """A shape-only DreamDraft (meta tensors); its d2t placeholder only satisfies the spec's size check."""
    d2t = None if spec.draft_vocab_size is None else torch.arange(spec.draft_vocab_size, device="cpu")
    with torch.device("meta"):
        embed = torch.empty(spec.target_vocab_size, spec.target_hidden_size)
        return DreamDraft(spec, embed, embed, d2t)


SUPERNET_CONFIG = "supernet.json"
SUPERNET_WEIGHTS = "supernet.pt"
_SHARED = ("embed_weight", "lm_head_weight", "draft_head")  # the target's tensors, never saved


def save_supernet(net: Supernet, folder) -> Path:
    """Writes the supernet's spec, branches and tensors (the shared embedding and LM head are left out)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": "dream-s-edge-supernet", "format_version": 1, "spec": net.spec.to_dict(),
              "interactions": list(net.branches)}
    (folder / SUPERNET_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items() if not k.endswith(_SHARED)}
    torch.save(state, folder / SUPERNET_WEIGHTS)
    return folder


def load_supernet(folder, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> Supernet:
    """Reads `save_supernet` output over the target's embedding and LM head.

    Raises:
        DraftSpecError: the folder is not a supernet checkpoint.
    """
    folder = Path(folder)
    if not (folder / SUPERNET_CONFIG).is_file():
        raise DraftSpecError(f"{folder} is not a supernet checkpoint.", f"no {SUPERNET_CONFIG} there",
                             "pass the folder written by save_supernet")
    config = json.loads((folder / SUPERNET_CONFIG).read_text())
    net = Supernet(DraftSpec.from_dict(config["spec"]), embed_weight, lm_head_weight, tuple(config["interactions"]))
    net = net.to(embed_weight.dtype)  # before loading, so the stored tensors are not rounded
    result = net.load_state_dict(torch.load(folder / SUPERNET_WEIGHTS, weights_only=True), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_SHARED)]
    if missing or result.unexpected_keys:
        raise DraftSpecError(f"{folder} does not match its own supernet.json.",
                             f"missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    return net
