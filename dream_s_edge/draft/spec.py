"""The draft's architecture as data: `DraftSpec` spans the DREAM-S search space.

A `DraftSpec` says everything needed to build a `DreamDraft` (depth, width, heads, how target features
enter, which target layers they come from, visual token keep ratio, draft vocabulary) plus the target
dimensions it was built for. `TargetDims` is the handful of target numbers a draft must agree with;
target adapters supply it, and `check_target` refuses a draft built for another target.

Data flow: spec -> `DreamDraft(spec, ...)` -> `TorchDraftRunner`; `to_dict`/`from_dict` carry it into
a checkpoint's `config.json` and an export manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runtime.errors import SpecMismatchError, UserInputError

INTERACTIONS = ("cross_attention", "concat", "none")


class DraftSpecError(UserInputError, ValueError):
    """A `DraftSpec` (or `TargetDims`) whose values cannot build a draft."""


@dataclass(frozen=True)
class TargetDims:
    """The target numbers a draft must agree with (supplied by the target adapters).

    Attributes:
        hidden_size: H_target, width of the embeddings, the LM head and each feature layer.
        vocab_size: V, rows of the shared embedding and LM head.
        num_layers: decoder layers L; feature layer L is the post-final-norm last hidden state.
        num_heads: attention heads of the target, used only by presets (None: derived from width).
        num_kv_heads: key/value heads of the target, used only by presets.
        intermediate_size: target FFN width, used only by presets.
        rope_theta: target rope base, used only by presets.
        rms_norm_eps: target RMSNorm epsilon, used only by presets.
        feature_layers: the feature layers the target runner emits, or None if not fixed yet.
    """

    hidden_size: int
    vocab_size: int
    num_layers: int
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    feature_layers: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("hidden_size", "vocab_size", "num_layers"):
            if getattr(self, name) < 1:
                raise DraftSpecError(f"TargetDims.{name} must be positive.", f"got {getattr(self, name)}")


@dataclass(frozen=True)
class DraftSpec:
    """Architecture of a DREAM / EAGLE-style draft (one point of the DREAM-S search space).

    Shapes: H_d = `hidden_size`, H_t = `target_hidden_size`, F = `feature_dim`, V_d = `draft_vocab`.
    """

    # Target this draft belongs to; the shared embedding and LM head are [V, H_t].
    target_hidden_size: int
    target_vocab_size: int
    target_num_layers: int
    # Decoder blocks (RoPE self-attention + SwiGLU); block 0 has no input norm.
    num_layers: int = 2
    # Width of the draft stream H_d (0 = H_t); when it differs from H_t the draft projects in and out.
    hidden_size: int = 0
    # SwiGLU inner width (0 = 8/3 of hidden_size, rounded up to a multiple of 32).
    ffn_size: int = 0
    # Query heads; any divisor of hidden_size whose head dim is even (rope).
    num_heads: int = 1
    # Key/value heads (GQA); divides num_heads. Cross-attention uses the same head layout.
    num_kv_heads: int = 1
    # Target hidden-state indices in HF convention (i = output of layer i, L = post-norm last
    # layer); -1 means L. Several layers are concatenated into F = len * H_t (EAGLE-3).
    feature_layers: tuple[int, ...] = (-1,)
    # How target features enter: "cross_attention" (DREAM), "concat" (EAGLE: fc(concat(emb, f)))
    # or "none" (a plain small LM).
    interaction: str = "cross_attention"
    # Index of the decoder block after which the gated cross-attention block sits.
    cross_attention_position: int = 0
    # Fraction of visual tokens kept in the draft's own input stream at prefill (DREAM VTC).
    visual_keep_ratio: float = 1.0
    # Size of the reduced draft vocabulary (EAGLE-3 d2t map), None = full target vocabulary.
    draft_vocab_size: int | None = None
    # Decoder block whose output is the early feature (intermediate distillation).
    early_feature_block: int = 0
    # Per-head width D of self- and cross-attention (0 = hidden_size // num_heads). Set explicitly
    # by DREAM-S sub-networks, which keep fewer heads of the same width (attention width H * D
    # below hidden_size).
    attention_head_dim: int = 0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_size == 0:
            object.__setattr__(self, "hidden_size", self.target_hidden_size)
        if self.ffn_size == 0:
            object.__setattr__(self, "ffn_size", _default_ffn(self.hidden_size))
        object.__setattr__(self, "feature_layers", self._resolved_feature_layers())
        self._validate_sizes()
        self._validate_heads()
        self._validate_interaction()
        self._validate_ranges()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """D, per-head width of self- and cross-attention."""
        return self.attention_head_dim or self.hidden_size // self.num_heads

    @property
    def feature_dim(self) -> int:
        """F, width of one target feature vector (the feature layers concatenated)."""
        return len(self.feature_layers) * self.target_hidden_size

    @property
    def draft_vocab(self) -> int:
        """V_d, rows of the draft's output distribution."""
        return self.draft_vocab_size or self.target_vocab_size

    # ---- validation ----------------------------------------------------------------------
    def _resolved_feature_layers(self) -> tuple[int, ...]:
        layers = tuple(int(i) for i in self.feature_layers)
        if not layers:
            raise DraftSpecError("DraftSpec.feature_layers is empty.", hint="use (-1,) for the last layer")
        resolved = tuple(self.target_num_layers if i == -1 else i for i in layers)
        bad = [i for i in resolved if not 0 <= i <= self.target_num_layers]
        if bad:
            raise DraftSpecError(
                "DraftSpec.feature_layers holds indices outside the target.",
                f"got {layers}, the target has hidden states 0..{self.target_num_layers}",
                "use HF indices (i = output of layer i) or -1 for the last layer",
            )
        if len(set(resolved)) != len(resolved):
            raise DraftSpecError("DraftSpec.feature_layers repeats a layer.", f"resolved to {resolved}")
        return resolved

    def _validate_sizes(self) -> None:
        for name in ("target_hidden_size", "target_vocab_size", "target_num_layers", "num_layers",
                     "hidden_size", "ffn_size", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise DraftSpecError(f"DraftSpec.{name} must be at least 1.", f"got {getattr(self, name)}")

    def _validate_heads(self) -> None:
        if self.attention_head_dim < 0:
            raise DraftSpecError("DraftSpec.attention_head_dim must be >= 0.", f"got {self.attention_head_dim}")
        if not self.attention_head_dim and self.hidden_size % self.num_heads:
            raise DraftSpecError(
                "DraftSpec.num_heads does not divide hidden_size.",
                f"hidden_size={self.hidden_size}, num_heads={self.num_heads}",
            )
        if self.num_heads % self.num_kv_heads:
            raise DraftSpecError(
                "DraftSpec.num_kv_heads does not divide num_heads.",
                f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}",
            )
        if self.head_dim % 2:
            raise DraftSpecError(
                "The draft's head dim must be even for rope.",
                f"hidden_size={self.hidden_size} / num_heads={self.num_heads} = {self.head_dim}",
            )

    def _validate_interaction(self) -> None:
        if self.interaction not in INTERACTIONS:
            raise DraftSpecError(
                f"Unknown DraftSpec.interaction {self.interaction!r}.", hint=f"use one of {INTERACTIONS}"
            )
        if not 0 <= self.cross_attention_position < self.num_layers:
            raise DraftSpecError(
                "DraftSpec.cross_attention_position must name a decoder block.",
                f"got {self.cross_attention_position}, num_layers={self.num_layers}",
            )

    def _validate_ranges(self) -> None:
        if not 0.0 < self.visual_keep_ratio <= 1.0:
            raise DraftSpecError("DraftSpec.visual_keep_ratio must lie in (0, 1].", f"got {self.visual_keep_ratio}")
        if self.draft_vocab_size is not None and not 1 <= self.draft_vocab_size <= self.target_vocab_size:
            raise DraftSpecError(
                "DraftSpec.draft_vocab_size must lie in 1..target_vocab_size (or be None).",
                f"got {self.draft_vocab_size}, target_vocab_size={self.target_vocab_size}",
            )
        if not 0 <= self.early_feature_block < self.num_layers:
            raise DraftSpecError(
                "DraftSpec.early_feature_block must name a decoder block.",
                f"got {self.early_feature_block}, num_layers={self.num_layers}",
            )
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise DraftSpecError(
                "DraftSpec.rope_theta and rms_norm_eps must be positive.",
                f"rope_theta={self.rope_theta}, rms_norm_eps={self.rms_norm_eps}",
            )

    # ---- serialization and presets -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["feature_layers"] = list(self.feature_layers)
        if not self.attention_head_dim:  # the default: older readers never see the field
            del out["attention_head_dim"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DraftSpec:
        """Builds a spec from `to_dict` output; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DraftSpecError("Unknown DraftSpec fields.", f"{unknown}", "was it written by a newer version?")
        values = dict(data)
        if "feature_layers" in values:
            values["feature_layers"] = tuple(values["feature_layers"])
        return cls(**values)

    @classmethod
    def from_name(cls, name: str, target: TargetDims, **overrides: Any) -> DraftSpec:
        """Builds a named preset sized for `target`; `overrides` replace preset fields.

        Presets: "dream-default" (DREAM: block, gated cross-attention, block; VTC 75%),
        "dream-small" (one block + cross-attention), "eagle" (one block, fc(concat(emb, f))),
        "eagle3" (one block, concat of low/mid/high target layers, reduced vocabulary).
        """
        if name not in _PRESETS:
            raise DraftSpecError(f"Unknown draft preset {name!r}.", hint=f"use one of {sorted(_PRESETS)}")
        values = {**_target_fields(target), **_PRESETS[name](target), **overrides}
        return cls(**values)


def _default_ffn(hidden: int) -> int:
    """Llama-style SwiGLU width: 8/3 of the hidden size, rounded up to a multiple of 32."""
    return -(-(8 * hidden // 3) // 32) * 32


def _target_fields(target: TargetDims) -> dict[str, Any]:
    heads = target.num_heads or max(1, target.hidden_size // 64)
    return {
        "target_hidden_size": target.hidden_size,
        "target_vocab_size": target.vocab_size,
        "target_num_layers": target.num_layers,
        "hidden_size": target.hidden_size,
        "ffn_size": target.intermediate_size or _default_ffn(target.hidden_size),
        "num_heads": heads,
        "num_kv_heads": target.num_kv_heads or heads,
        "rope_theta": target.rope_theta,
        "rms_norm_eps": target.rms_norm_eps,
    }


def _eagle3_layers(target: TargetDims) -> tuple[int, ...]:
    """EAGLE-3's low / mid / high layers (outputs of layers 2, L/2 and L-3), deduplicated."""
    L = target.num_layers
    picks = [min(2, L), max(1, L // 2), max(1, L - 3)]
    return tuple(sorted(set(picks)))


_PRESETS = {
    "dream-default": lambda t: {"num_layers": 2, "interaction": "cross_attention",
                                "cross_attention_position": 0, "visual_keep_ratio": 0.75},
    "dream-small": lambda t: {"num_layers": 1, "interaction": "cross_attention",
                              "cross_attention_position": 0, "visual_keep_ratio": 0.75},
    "eagle": lambda t: {"num_layers": 1, "interaction": "concat"},
    "eagle3": lambda t: {"num_layers": 1, "interaction": "concat", "feature_layers": _eagle3_layers(t),
                         "draft_vocab_size": min(t.vocab_size, 32000)},
}


def check_target(spec: DraftSpec, target: TargetDims) -> None:
    """Refuses a draft built for another target.

    Raises:
        SpecMismatchError: naming the field, the draft's value and the target's value.
    """
    pairs = [
        ("hidden_size", spec.target_hidden_size, target.hidden_size),
        ("vocab_size", spec.target_vocab_size, target.vocab_size),
        ("num_layers", spec.target_num_layers, target.num_layers),
    ]
    if target.feature_layers is not None:
        resolved = tuple(target.num_layers if i == -1 else i for i in target.feature_layers)
        pairs.append(("feature_layers", spec.feature_layers, resolved))
    for name, draft_value, target_value in pairs:
        if draft_value != target_value:
            raise SpecMismatchError(
                f"The draft was built for a target with another {name}.",
                f"draft {name}={draft_value}, target {name}={target_value}",
                "train or load a draft for this target",
            )
