"""The runner interface: what the speculative loop asks of a target and of a draft.

The loop in `runtime/` is written once over these two protocols. It is driven by PyTorch runners
(`dream_s_edge/runners/`), onnxruntime runners and TensorRT runners (`runtime/`), all with numpy
arrays at the boundary. Shapes use one vocabulary: T prompt tokens, N tree nodes, A accepted tokens,
n nodes in one draft tree step, S scratch slots, K top-k, V target vocabulary, F feature width.

Data flow of one round (P = position of the root, the token the target chose last)::

    target.prefill(prompt)                -> PrefillResult (logits of the last prompt position)
    draft.prefill(result, ids, root)      -> Proposal for the root's children
    loop: draft.tree_step(...) x depth    -> Proposals; the loop builds TreeBuffers from them
          target.verify(tree)             -> VerifyResult (logits, features of N nodes)
          accept                          -> accepted node indices + bonus token
          target.commit(accepted)         -> K/V of accepted nodes moved to contiguous slots
          draft.advance(tokens, features) -> Proposal for the new root's children

Feature alignment (EAGLE's one-step shift): draft position i holds token x_i and may read target
features f_0 .. f_{i-1}. So the draft's feature memory is always one entry shorter than its token
stream, and `advance` appends as many features as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One request, already tokenized and preprocessed by the target's processor.

    Attributes:
        input_ids: [T] int64 prompt token ids, image placeholder tokens included.
        extras: named arrays the target needs besides the ids (pixel values, image grid, token
            types). The loop never looks inside; each runner documents its own keys.
        head: leading tokens the chat template puts before the question in every prompt; a
            runner may keep their K/V from the previous prompt (`runtime.prompt_head`). 0: none.
    """

    input_ids: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    head: int = 0


@dataclass(frozen=True)
class PrefillResult:
    """What the target's prefill hands to the loop and to the draft.

    Attributes:
        logits: [V] float32 logits at the last prompt position (they choose the first root).
        features: [T, F] float32 target features at every prompt position.
        inputs_embeds: [T, H] float32 the target's layer-0 input (images spliced in), or None.
        visual_scores: [T] float32 attention each position receives in the target's last layer
            (mean over heads, summed over queries); meaningful where `visual_mask` is set, or None.
        visual_mask: [T] bool, True at image-token positions, or None for a text-only prompt.
        reused: leading prompt tokens the target did not run again, their K/V kept from the
            previous prompt (`runtime.prompt_head`); a draft may keep its own for as many.
    """

    logits: np.ndarray
    features: np.ndarray
    inputs_embeds: np.ndarray | None = None
    visual_scores: np.ndarray | None = None
    visual_mask: np.ndarray | None = None
    reused: int = 0


@dataclass(frozen=True)
class VerifyResult:
    """The target's output over one tree.

    Attributes:
        logits: [N, V] float32, row j predicts the token after node j.
        features: [N, F] float32 target features of the N nodes.
    """

    logits: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class Proposal:
    """The draft's top-k continuations of some nodes.

    Attributes:
        token_ids: [n, K] int64 ids in the *target* vocabulary, best first.
        logprobs: [n, K] float32 draft log-probabilities of those ids.
    """

    token_ids: np.ndarray
    logprobs: np.ndarray


@dataclass(frozen=True)
class RunnerLimits:
    """Sizes the runner's buffers were allocated for; the loop refuses anything larger.

    Attributes:
        max_context: committed tokens the KV cache holds (prompt plus answer).
        node_budget: N, the most tree nodes one verify call takes (root included).
        max_depth: the deepest tree the draft's scratch buffers take (0 for a target).
    """

    max_context: int
    node_budget: int
    max_depth: int = 0


@runtime_checkable
class TargetRunner(Protocol):
    """A target VLM over a KV cache preallocated for `max_context + node_budget` slots."""

    limits: RunnerLimits
    vocab_size: int
    feature_dim: int

    @property
    def length(self) -> int:
        """Committed tokens in the KV cache."""

    def reset(self) -> None:
        """Forgets the committed tokens; keeps every buffer."""

    def prefill(self, prompt: Prompt) -> PrefillResult:
        """Consumes the prompt, produces its last logits and features; commits T tokens."""

    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        """Consumes N nodes, produces their logits and features; writes K/V after `length`.

        Args:
            tokens: [N] int64 node token ids.
            positions: [N] int64 absolute positions (length + depth). A runner whose family uses
                multimodal rope adds its own offset.
            tree_mask: [N, N] bool, row j True at j's ancestors and j itself.
        """

    def commit(self, accepted: np.ndarray) -> None:
        """Consumes accepted node indices [A] (root first, ascending depth), moves their K/V slots
        `length + accepted[i]` to `length + i`, and advances `length` by A."""


@runtime_checkable
class DraftRunner(Protocol):
    """A draft with a committed KV cache and a scratch area for one tree.

    Attributes:
        limits: context, scratch slots and depth the buffers were sized for.
        padded_steps: whether `tree_step` wants the tree spec's fixed width n on every call (dummy
            rows pad a level with fewer nodes): engines with fixed shapes (TensorRT) do; runners
            that take any n (onnxruntime, PyTorch) say False and get only the real nodes. A runner
            without the attribute is padded.
        calibration: the `runtime.tree_calibration.TreeCalibration` a dynamic tree scores this
            draft's candidates with (the target's measured acceptance of its probabilities), or
            None for the raw draft probabilities. A runner without the attribute is uncalibrated.
    """

    limits: RunnerLimits

    def reset(self) -> None:
        """Forgets the committed tokens; keeps every buffer."""

    def prefill(self, result: PrefillResult, input_ids: np.ndarray, root: int, top_k: int) -> Proposal:
        """Consumes the target's prefill and the first root token; commits T + 1 positions.

        Returns the top-k continuations of the root, shape [1, K].
        """

    def advance(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> Proposal:
        """Consumes A tokens (accepted nodes after the old root, then the new root) and the target
        features [A, F] of the old root and the accepted nodes; commits A positions and clears
        the scratch area. Returns the top-k continuations of the new root, shape [1, K]."""

    def tree_step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        slots: np.ndarray,
        tree_mask: np.ndarray,
        top_k: int,
    ) -> Proposal:
        """Consumes n tree nodes below the root, produces their top-k continuations [n, K].

        Args:
            tokens: [n] int64 node token ids (target vocabulary).
            positions: [n] int64 absolute positions (root position + depth).
            slots: [n] int64 scratch slots the nodes' K/V and output features are written to.
            tree_mask: [n, S] bool over scratch slots, True at each node's ancestors below the root
                and at itself. Every node also sees the committed cache and the root.
        """
