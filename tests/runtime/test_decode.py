"""The speculative loop over toy numpy runners: greedy output equals autoregressive output exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_runners import RandomDraft, ToyDraft, ToyTarget, ToyWeights

from runtime.accept import SamplingConfig
from runtime.decode import autoregressive_generate, speculative_generate
from runtime.errors import CapacityError, PromptError
from runtime.runner import DraftRunner, Prompt, TargetRunner
from runtime.tree import TreeSpec

VOCAB = 48
NEW = 30
SPECS = [
    TreeSpec.chain(4),
    TreeSpec.from_name("static-16"),
    TreeSpec.dynamic(top_k=4, depth=5, node_budget=24),
    TreeSpec.dynamic(top_k=3, depth=3, node_budget=10),
    TreeSpec.dynamic(top_k=4, depth=5, node_budget=24, min_prob=0.05),  # 1..24 nodes a round
]
SPEC_IDS = ["chain4", "static16", "dyn-k4d5n24", "dyn-k3d3n10", "dyn-k4d5n24-p0.05"]


@pytest.fixture(scope="module")
def weights() -> ToyWeights:
    return ToyWeights.random(vocab=VOCAB, seed=0)


@pytest.fixture(scope="module")
def target(weights: ToyWeights) -> ToyTarget:
    return ToyTarget(weights)


@pytest.fixture(scope="module")
def drafts(weights: ToyWeights) -> dict[str, DraftRunner]:
    return {
        "oracle": ToyDraft(weights),
        "partial": ToyDraft(weights.perturbed(0.15, seed=1)),
        "random": RandomDraft(VOCAB, seed=2),
    }


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    rng = np.random.default_rng(7)
    return [Prompt(rng.integers(0, VOCAB, size=int(n))) for n in rng.integers(1, 50, size=22)]


@pytest.fixture(scope="module")
def reference(target: ToyTarget, prompts: list[Prompt]) -> list[np.ndarray]:
    return [autoregressive_generate(target, p, max_new_tokens=NEW).tokens for p in prompts]


def test_protocols(target: ToyTarget, drafts: dict[str, DraftRunner]) -> None:
    assert isinstance(target, TargetRunner)
    assert all(isinstance(d, DraftRunner) for d in drafts.values())


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("kind", ["oracle", "partial", "random"])
def test_greedy_equals_autoregressive(target, drafts, prompts, reference, spec: TreeSpec, kind: str) -> None:
    taus = []
    for prompt, want in zip(prompts, reference, strict=True):
        out = speculative_generate(target, drafts[kind], prompt, spec, max_new_tokens=NEW)
        np.testing.assert_array_equal(out.tokens, want)
        assert out.stop_reason == "max_new_tokens"
        if spec.min_prob:  # pruned trees verify what is left, never more than the budget
            assert max(target.verify_sizes) <= spec.node_budget and min(target.verify_sizes) >= 1
        else:  # fixed shapes
            assert set(target.verify_sizes) == {spec.node_budget}
        taus.append(out.metrics.tau)
    if kind == "random":
        assert np.mean(taus) < 1.5
    if kind == "partial":
        assert 1.2 < np.mean(taus) < spec.depth + 1


@pytest.mark.parametrize(
    "spec",
    [TreeSpec.chain(5), TreeSpec.from_name("static-16"), TreeSpec.dynamic(top_k=1, depth=4, node_budget=5)],
    ids=["chain5", "static16", "dyn-k1"],
)
def test_oracle_draft_reaches_full_tau(target, drafts, prompts, spec: TreeSpec) -> None:
    passes = -(-(NEW - 1) // (spec.depth + 1))
    last = (NEW - 1) - (passes - 1) * (spec.depth + 1)  # tokens the last pass may still emit
    for prompt in prompts[:6]:
        out = speculative_generate(target, drafts["oracle"], prompt, spec, max_new_tokens=NEW)
        counts = out.metrics.accept_counts
        assert out.metrics.target_passes == passes
        if spec.kind == "static":  # fixed shape: every pass accepts the full depth (the extra is dropped)
            assert counts[:-1] == [0] * spec.depth
            assert out.metrics.tau == spec.depth + 1
        else:  # a dynamic tree grows no deeper than the tokens left: the last pass accepts what it may emit
            assert counts[-1] == passes - 1 + (last == spec.depth + 1)
            assert counts[min(last - 1, spec.depth)] >= 1


def test_eos_stops_exactly(target, drafts, prompts, reference) -> None:
    for prompt, want in zip(prompts[:8], reference[:8], strict=True):
        eos = int(want[9])
        stop = int(np.flatnonzero(want == eos)[0])
        ar = autoregressive_generate(target, prompt, max_new_tokens=NEW, eos_ids=[eos])
        np.testing.assert_array_equal(ar.tokens, want[: stop + 1])
        for spec in SPECS:
            out = speculative_generate(
                target, drafts["oracle"], prompt, spec, max_new_tokens=NEW, eos_ids=[eos, 999]
            )
            np.testing.assert_array_equal(out.tokens, want[: stop + 1])
            assert out.stop_reason == "eos"


@pytest.mark.parametrize("limit", [0, 1, 2, 5, 13, NEW])
def test_max_new_tokens_exact(target, drafts, prompts, reference, limit: int) -> None:
    for prompt, want in zip(prompts[:5], reference[:5], strict=True):
        for spec in SPECS[:3]:
            out = speculative_generate(target, drafts["oracle"], prompt, spec, max_new_tokens=limit)
            np.testing.assert_array_equal(out.tokens, want[:limit])
            assert out.metrics.new_tokens == limit


def test_context_cap(weights, prompts) -> None:
    target = ToyTarget(weights, max_context=40, node_budget=24)
    draft = ToyDraft(weights, max_context=40, scratch=24)
    prompt = Prompt(
        prompts[0].input_ids[:30] if prompts[0].input_ids.shape[0] >= 30 else np.arange(30) % VOCAB
    )
    ar = autoregressive_generate(target, prompt, max_new_tokens=100)
    assert ar.stop_reason == "context" and ar.tokens.shape[0] == 10
    for spec in SPECS:
        out = speculative_generate(target, draft, prompt, spec, max_new_tokens=100)
        np.testing.assert_array_equal(out.tokens, ar.tokens)
        assert out.stop_reason == "context"
    with pytest.raises(PromptError):
        speculative_generate(target, draft, Prompt(np.zeros(40, np.int64)), SPECS[0])


def test_buffers_keep_identity(weights, prompts) -> None:
    target, draft = ToyTarget(weights), ToyDraft(weights.perturbed(0.15, seed=1))

    def pointers():
        caches = [target.model.cache, draft.model.cache]
        return [
            (id(c.k), c.k.__array_interface__["data"][0], c.v.__array_interface__["data"][0]) for c in caches
        ]

    before = pointers()
    for spec in SPECS:
        speculative_generate(target, draft, prompts[1], spec, max_new_tokens=NEW)
        assert pointers() == before


def test_capacity_refused(weights, drafts, prompts) -> None:
    small = ToyTarget(weights, node_budget=8)
    with pytest.raises(CapacityError, match="node budget"):
        speculative_generate(small, drafts["oracle"], prompts[0], TreeSpec.from_name("static-16"))
    shallow = ToyDraft(weights, max_depth=3)
    with pytest.raises(CapacityError, match="depth"):
        speculative_generate(ToyTarget(weights), shallow, prompts[0], TreeSpec.chain(4))
    narrow = ToyDraft(weights, scratch=10)
    with pytest.raises(CapacityError, match="scratch slots"):
        speculative_generate(ToyTarget(weights), narrow, prompts[0], TreeSpec.dynamic(4, 5, 24))


def test_streaming_and_metrics(target, drafts, prompts, reference) -> None:
    chunks: list[np.ndarray] = []
    out = speculative_generate(
        target, drafts["partial"], prompts[2], SPECS[2], max_new_tokens=NEW, on_tokens=chunks.append
    )
    np.testing.assert_array_equal(np.concatenate(chunks), out.tokens)
    assert len(chunks) == out.metrics.target_passes + 1  # the first token comes from prefill
    report = json.loads(json.dumps(out.metrics.to_dict()))
    assert report["new_tokens"] == NEW and report["target_passes"] == out.metrics.target_passes
    assert report["tau"] == pytest.approx(
        sum((a + 1) * c for a, c in enumerate(report["accept_counts"])) / report["target_passes"]
    )
    parts = report["prefill_s"] + report["draft_s"] + report["verify_s"] + report["host_s"]
    assert parts == pytest.approx(report["wall_s"], rel=1e-6)
    ar = autoregressive_generate(target, prompts[2], max_new_tokens=NEW)
    assert ar.metrics.tau == 1.0 and ar.metrics.target_passes == NEW - 1


def test_sampling_runs_and_is_reproducible(target, drafts, prompts) -> None:
    sampling = SamplingConfig(temperature=0.8, top_p=0.9)
    runs = [
        speculative_generate(
            target, drafts["oracle"], prompts[3], SPECS[2], sampling, NEW, rng=np.random.default_rng(5)
        ).tokens
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (NEW,)
    ar = autoregressive_generate(target, prompts[3], sampling, NEW, rng=np.random.default_rng(5))
    assert ar.tokens.shape == (NEW,)
