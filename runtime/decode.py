"""The speculative decoding loop, written once over the `TargetRunner` / `DraftRunner` protocols.

One round, as named stage functions (the same names as in `dream_s_edge/`)::

    prefill    prompt                  -> first root token, draft proposal for its children
    draft_tree root + proposal         -> TreeBuffers (N nodes)
    verify     TreeBuffers             -> VerifyResult (target logits and features of the N nodes)
    accept     VerifyResult            -> AcceptResult (accepted nodes, bonus token)
    commit_kv  AcceptResult            -> target and draft caches advanced, next root's proposal

`autoregressive_generate` is the baseline: the same stages with a root-only tree (N = 1), so it
emits exactly one target token per pass and shares prefill, processors and stopping with the
speculative loop. Greedy speculative output equals greedy autoregressive output token for token.

Stopping: at the first EOS (kept in the output), after `max_new_tokens` tokens, or at the end of the
context. Tokens accepted past a stop are dropped. Generation is capped gracefully at
`min(max_context of target and draft) - T` new tokens (stop reason "context") rather than refused,
so a long request still returns what fits; a prompt that alone fills the context is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from runtime.accept import GREEDY, AcceptResult, SamplingConfig, accept_tree, sample_token
from runtime.errors import CapacityError, PromptError, SpecMismatchError, UserInputError
from runtime.metrics import Metrics
from runtime.runner import DraftRunner, Prompt, Proposal, TargetRunner, VerifyResult
from runtime.tree import TreeBuffers, TreeSpec, build_tree, tree_buffers

logger = logging.getLogger(__name__)

TokenCallback = Callable[[np.ndarray], None]
# Called after each speculative pass's acceptance with (tree, verify result, acceptance): an observer
# for analysis and calibration (`runtime/tree_calibration.py`); it must not change what it is given.
PassCallback = Callable[[TreeBuffers, VerifyResult, AcceptResult], None]


@dataclass
class DecodeState:
    """What the stages hand each other during one generate call.

    Attributes:
        prompt_len: T, prompt tokens committed by prefill.
        limit: the most new tokens this call may emit (max_new_tokens capped by the context).
        eos_ids: token ids that end generation.
        tokens: emitted answer tokens so far; the last one is the root of the next tree.
        proposal: the draft's top-k continuations of the root, [1, K] (None without a draft).
        stop_reason: None while running; then "eos", "max_new_tokens" or "context".
        limit_reason: the stop reason used when `limit` is reached.
        metrics: counters and stage timings.
        on_tokens: streaming callback, called with each chunk of new token ids [c] int64.
    """

    prompt_len: int
    limit: int
    eos_ids: frozenset[int]
    limit_reason: str
    metrics: Metrics
    on_tokens: TokenCallback | None = None
    tokens: list[int] = field(default_factory=list)
    proposal: Proposal | None = None
    stop_reason: str | None = None

    @property
    def root(self) -> int:
        """The token the target chose last (not yet committed in the target's cache)."""
        return self.tokens[-1]

    @property
    def root_position(self) -> int:
        """Absolute position of the root = committed tokens in the target's cache."""
        return self.prompt_len + len(self.tokens) - 1

    @property
    def done(self) -> bool:
        """True once a stop condition was met."""
        return self.stop_reason is not None


@dataclass(frozen=True)
class GenerationResult:
    """The answer of one generate call.

    Attributes:
        tokens: [E] int64 new token ids (EOS included when it stopped generation).
        stop_reason: "eos", "max_new_tokens" or "context".
        metrics: acceptance, throughput and timings.
    """

    tokens: np.ndarray
    stop_reason: str
    metrics: Metrics


def check_capacity(target: TargetRunner, draft: DraftRunner, spec: TreeSpec) -> None:
    """Refuses a tree the runners' preallocated buffers cannot take.

    A draft's `limits.node_budget` is read as its scratch slot count S (see `TreeSpec.scratch_slots`).

    Raises:
        CapacityError: node budget, depth or scratch slots beyond the runners' limits.
    """
    checks = [
        ("node budget", spec.node_budget, target.limits.node_budget, "target node_budget"),
        ("depth", spec.depth, draft.limits.max_depth, "draft max_depth"),
        ("scratch slots", spec.scratch_slots, draft.limits.node_budget, "draft node_budget"),
    ]
    for what, want, have, name in checks:
        if want > have:
            raise CapacityError(
                f"The tree's {what} exceeds what the runners were built for.",
                note=f"tree {what} {want} > {name} {have} (tree {spec})",
                hint="Use a smaller tree, or re-export the runners with larger limits.",
            )


def _start(
    prompt: Prompt,
    max_new_tokens: int,
    eos_ids: Iterable[int],
    max_context: int,
    depth: int,
    on_tokens: TokenCallback | None,
) -> DecodeState:
    """Checks the prompt against the context and returns a fresh DecodeState."""
    t = int(prompt.input_ids.shape[0])
    if max_new_tokens < 0:
        raise UserInputError("max_new_tokens must not be negative.", note=f"max_new_tokens {max_new_tokens}")
    if t < 1 or t >= max_context:
        raise PromptError(
            "The prompt is empty or fills the whole context.",
            note=f"prompt {t} tokens, max_context {max_context}",
            hint="Shorten the prompt (fewer or smaller images) or use runners with a longer context.",
        )
    limit, reason = max_new_tokens, "max_new_tokens"
    if t + max_new_tokens > max_context:
        limit, reason = max_context - t, "context"
        logger.warning("max_new_tokens %d capped to %d by max_context %d", max_new_tokens, limit, max_context)
    return DecodeState(
        prompt_len=t,
        limit=limit,
        eos_ids=frozenset(int(e) for e in eos_ids),
        limit_reason=reason,
        metrics=Metrics.for_depth(depth),
        on_tokens=on_tokens,
    )


def _emit(state: DecodeState, chunk: np.ndarray) -> None:
    """Appends new tokens [c], cut after the first EOS and at the limit; sets the stop reason."""
    chunk = np.asarray(chunk, dtype=np.int64)[: state.limit - len(state.tokens)]
    eos = [i for i, tok in enumerate(chunk.tolist()) if tok in state.eos_ids]
    if eos:
        chunk = chunk[: eos[0] + 1]
        state.stop_reason = "eos"
    state.tokens.extend(chunk.tolist())
    if state.stop_reason is None and len(state.tokens) >= state.limit:
        state.stop_reason = state.limit_reason
    if state.on_tokens is not None and chunk.size:
        state.on_tokens(chunk)


def prefill(
    state: DecodeState,
    target: TargetRunner,
    draft: DraftRunner | None,
    prompt: Prompt,
    top_k: int,
    sampling: SamplingConfig,
    rng: np.random.Generator | None,
) -> None:
    """Consumes the prompt, produces the first root token (emitted) and the draft's proposal for it."""
    with state.metrics.timed("prefill"):
        target.reset()
        result = target.prefill(prompt)
        state.metrics.reused_prompt_tokens = result.reused
        _emit(state, np.array([sample_token(result.logits, sampling, rng)]))
        if draft is not None and not state.done:
            draft.reset()
            state.proposal = draft.prefill(result, prompt.input_ids, state.root, top_k)


def draft_tree(state: DecodeState, draft: DraftRunner, spec: TreeSpec) -> TreeBuffers:
    """Consumes the root and the draft's proposal, produces the N-node TreeBuffers.

    A round emits its accepted nodes plus the bonus, so with r tokens left to emit a dynamic tree
    grows no deeper than r - 1, and never below an EOS candidate."""
    with state.metrics.timed("draft"):
        left = state.limit - len(state.tokens)
        return build_tree(spec, draft, state.root, state.proposal, state.root_position, state.eos_ids, left - 1)


def verify(state: DecodeState, target: TargetRunner, tree: TreeBuffers) -> VerifyResult:
    """Consumes TreeBuffers, produces the target's logits [N, V] and features [N, F]."""
    with state.metrics.timed("verify"):
        result = target.verify(tree.tokens, tree.positions(state.root_position), tree.tree_mask)
    if result.logits.shape[0] != tree.size or result.features.shape[0] != tree.size:
        raise SpecMismatchError(
            "The target returned outputs for the wrong number of nodes.",
            note=f"logits {result.logits.shape}, features {result.features.shape}, N {tree.size}",
        )
    return result


def accept(
    tree: TreeBuffers, result: VerifyResult, sampling: SamplingConfig, rng: np.random.Generator | None
) -> AcceptResult:
    """Consumes the tree and its logits, produces the accepted nodes (root first) and the bonus."""
    return accept_tree(tree, result.logits, sampling, rng)


def commit_kv(
    state: DecodeState,
    target: TargetRunner,
    draft: DraftRunner | None,
    tree: TreeBuffers,
    result: VerifyResult,
    outcome: AcceptResult,
    top_k: int,
) -> None:
    """Consumes the accepted nodes, produces advanced caches and the new root's proposal."""
    with state.metrics.timed("verify"):
        target.commit(outcome.nodes)
    if draft is not None:
        tokens = _round_chunk(tree, outcome)  # [A] accepted after the root, then the new root
        with state.metrics.timed("draft"):
            state.proposal = draft.advance(tokens, result.features[outcome.nodes], top_k)


def _round_chunk(tree: TreeBuffers, outcome: AcceptResult) -> np.ndarray:
    """[A] the tokens a round emits: accepted nodes after the root, then the bonus."""
    return np.append(tree.tokens[outcome.nodes[1:]], outcome.bonus).astype(np.int64)


def speculative_generate(
    target: TargetRunner,
    draft: DraftRunner,
    prompt: Prompt,
    tree_spec: TreeSpec,
    sampling: SamplingConfig = GREEDY,
    max_new_tokens: int = 256,
    eos_ids: Iterable[int] = (),
    rng: np.random.Generator | None = None,
    on_tokens: TokenCallback | None = None,
    on_pass: PassCallback | None = None,
) -> GenerationResult:
    """Generates with speculative tree decoding; lossless w.r.t. the target's (processed) sampling.

    Args:
        target: the target runner.
        draft: the draft runner.
        prompt: the tokenized request.
        tree_spec: the tree shape (static or dynamic).
        sampling: temperature and top-p; greedy by default.
        max_new_tokens: the most tokens to emit.
        eos_ids: token ids that end generation (kept in the output).
        rng: seeded generator for sampling (default: np.random.default_rng(0)).
        on_tokens: called with each chunk of new token ids [c] as soon as it is final.
        on_pass: called after each pass's acceptance with the tree, the target's verify result and
            the acceptance (see `PassCallback`).

    Returns:
        GenerationResult with the new tokens, the stop reason and the metrics.

    Raises:
        CapacityError: the tree exceeds the runners' limits.
        PromptError: the prompt alone fills the context.
    """
    start = time.perf_counter()
    check_capacity(target, draft, tree_spec)
    max_context = min(target.limits.max_context, draft.limits.max_context)
    state = _start(prompt, max_new_tokens, eos_ids, max_context, tree_spec.depth, on_tokens)
    rng = rng if rng is not None else np.random.default_rng(0)
    prefill(state, target, draft, prompt, tree_spec.top_k, sampling, rng)
    while not state.done:
        tree = draft_tree(state, draft, tree_spec)
        result = verify(state, target, tree)
        outcome = accept(tree, result, sampling, rng)
        if on_pass is not None:
            on_pass(tree, result, outcome)
        state.metrics.record_pass(outcome.accepted)
        _emit(state, _round_chunk(tree, outcome))
        if not state.done:  # after a stop the caches are left as they are; prefill resets them
            commit_kv(state, target, draft, tree, result, outcome, tree_spec.top_k)
    return _finish(state, start)


def autoregressive_generate(
    target: TargetRunner,
    prompt: Prompt,
    sampling: SamplingConfig = GREEDY,
    max_new_tokens: int = 256,
    eos_ids: Iterable[int] = (),
    rng: np.random.Generator | None = None,
    on_tokens: TokenCallback | None = None,
) -> GenerationResult:
    """The baseline: one target pass per token (verify with N = 1, commit([0])).

    Args and Returns are as in `speculative_generate`, without a draft or tree.
    """
    start = time.perf_counter()
    state = _start(prompt, max_new_tokens, eos_ids, target.limits.max_context, 0, on_tokens)
    rng = rng if rng is not None else np.random.default_rng(0)
    prefill(state, target, None, prompt, 0, sampling, rng)
    while not state.done:
        tree = _root_only(state.root)
        result = verify(state, target, tree)
        outcome = accept(tree, result, sampling, rng)
        state.metrics.record_pass(outcome.accepted)
        _emit(state, _round_chunk(tree, outcome))
        if not state.done:
            commit_kv(state, target, None, tree, result, outcome, 0)
    return _finish(state, start)


def _root_only(root: int) -> TreeBuffers:
    """A one-node tree: the root alone."""
    ones = np.ones(1, dtype=bool)
    return tree_buffers(np.array([root]), np.array([-1]), np.zeros(1), ones, max_depth=0)


def _finish(state: DecodeState, start: float) -> GenerationResult:
    """Closes the metrics and packs the result."""
    state.metrics.new_tokens = len(state.tokens)
    state.metrics.wall_s = time.perf_counter() - start
    logger.debug("generated %d tokens, tau %.2f", len(state.tokens), state.metrics.tau)
    return GenerationResult(np.array(state.tokens, dtype=np.int64), state.stop_reason, state.metrics)
