"""TorchDraftRunner against oracles: the teacher-forced pass (prefill, advance, VTC), the draft's own
features for tree nodes (feature autoregression), and branches run alone (the tree mask in self- and
cross-attention). Tiny random weights in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dream_s_edge.draft import DraftSpec, DreamDraft, TargetDims, build_vocab_map
from dream_s_edge.runners.draft_torch import TorchDraftRunner
from runtime.errors import CapacityError, SpecMismatchError
from runtime.runner import DraftRunner, PrefillResult
from runtime.tree import TreeSpec, dynamic_tree, static_tree

H, V, T = 32, 50, 10
TARGET = TargetDims(hidden_size=H, vocab_size=V, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=64)
VARIANTS = {
    "cross": {"interaction": "cross_attention"},
    "cross-deep-narrow": {"interaction": "cross_attention", "num_layers": 3, "cross_attention_position": 1,
                          "hidden_size": 24, "draft_vocab_size": 30},
    "cross-two-layers": {"interaction": "cross_attention", "feature_layers": (2, 4)},
    "concat": {"interaction": "concat", "num_layers": 1},
    "concat-eagle3": {"interaction": "concat", "feature_layers": (1, 2, 4), "draft_vocab_size": 30},
    "none": {"interaction": "none"},
}
SINGLE_LAYER = ["cross", "cross-deep-narrow", "concat", "none"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_draft(variant: str, seed: int = 0, **overrides) -> DreamDraft:
    spec = DraftSpec.from_name("dream-default", TARGET, **{"visual_keep_ratio": 1.0, **VARIANTS[variant],
                                                           **overrides})
    g = torch.Generator().manual_seed(seed)
    embed, head = torch.randn(V, H, generator=g), 0.3 * torch.randn(V, H, generator=g)
    d2t = build_vocab_map(torch.rand(V, generator=g), spec.draft_vocab_size) if spec.draft_vocab_size else None
    model = DreamDraft(spec, embed, head, d2t)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model.double().eval()


def make_runner(model: DreamDraft, max_context: int = 16) -> TorchDraftRunner:
    return TorchDraftRunner(model, TARGET, max_context=max_context, scratch_slots=6, max_depth=3)


def sample(model: DreamDraft, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=T).astype(np.int64)
    features = rng.standard_normal((T, model.spec.feature_dim)).astype(np.float32)
    return ids, features


def full_logprobs(model: DreamDraft, embeds, features, positions=None) -> np.ndarray:
    """Teacher-forced oracle: [T', V] log-probs over the target vocabulary (-inf off the draft vocab)."""
    with torch.no_grad():
        out = model(embeds[None], torch.as_tensor(features, dtype=torch.float64)[None], positions)
    logp = torch.log_softmax(out.logits[0], -1).numpy()
    dense = np.full((logp.shape[0], V), -np.inf)
    dense[:, np.arange(logp.shape[1]) if model.d2t is None else model.d2t.numpy()] = logp
    return dense


def dense(proposal, row: int = 0) -> np.ndarray:
    """A full-vocabulary proposal row as [V] log-probs by target id."""
    out = np.full(V, -np.inf)
    out[proposal.token_ids[row]] = proposal.logprobs[row]
    return out


def assert_close(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> None:
    finite = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), finite)
    assert np.abs(a[finite] - b[finite]).max() <= atol


def embed(model: DreamDraft, ids) -> torch.Tensor:
    return model.embed(torch.as_tensor(np.asarray(ids)))


def step_mask(rows: list[list[int]], width: int = 6) -> np.ndarray:
    mask = np.zeros((len(rows), width), dtype=bool)
    for r, slots in enumerate(rows):
        mask[r, slots] = True
    return mask


def test_implements_the_protocol():
    runner = make_runner(make_draft("cross"))
    assert isinstance(runner, DraftRunner)
    assert runner.limits.node_budget == 6 and runner.limits.max_depth == 3


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("with_embeds", [False, True])
def test_prefill_and_advance_match_teacher_forced(variant, with_embeds):
    model = make_draft(variant)
    runner, (ids, feats) = make_runner(model), sample(model)
    vd = model.spec.draft_vocab
    prompt_embeds = np.random.default_rng(2).standard_normal((4, H)).astype(np.float32) if with_embeds else None
    embeds = embed(model, ids)
    if with_embeds:
        embeds = torch.cat((torch.as_tensor(prompt_embeds, dtype=torch.float64), embeds[4:]))
    oracle = full_logprobs(model, embeds, feats)

    result = PrefillResult(logits=np.zeros(V, np.float32), features=feats[:4], inputs_embeds=prompt_embeds)
    assert_close(dense(runner.prefill(result, ids[:4], int(ids[4]), vd)), oracle[4])
    # A tree step in between only touches scratch: the committed stream is unaffected.
    runner.tree_step(ids[:2], np.array([5, 5]), np.array([0, 1]), step_mask([[0], [1]]), 3)
    assert_close(dense(runner.advance(ids[5:7], feats[4:6], vd)), oracle[6])
    assert_close(dense(runner.advance(ids[7:8], feats[6:7], vd)), oracle[7])
    assert_close(dense(runner.advance(ids[8:10], feats[7:9], vd)), oracle[9])
    assert runner.length == 10


# Tree under a root at position P = 5:  root -+- a (slot 2) -+- c (slot 1)
#                                             |              '- d (slot 4)
#                                             '- b (slot 0) --- e (slot 3)
TOKENS = {"a": 11, "b": 12, "c": 13, "d": 14, "e": 15}
PARENT = {"a": None, "b": None, "c": "a", "d": "a", "e": "b"}
SLOT = {"a": 2, "b": 0, "c": 1, "d": 4, "e": 3}


def prefilled(model: DreamDraft):
    runner, (ids, feats) = make_runner(model), sample(model)
    result = PrefillResult(logits=np.zeros(V, np.float32), features=feats[:5])
    runner.prefill(result, ids[:5], int(ids[5]), model.spec.draft_vocab)
    return runner, ids, feats


def run_tree(runner: TorchDraftRunner, vd: int, slot: dict[str, int]) -> dict[str, np.ndarray]:
    """Feeds the tree one depth level per call; returns each node's [V] log-probs."""
    out = {}
    for level in (["a", "b"], ["c", "d", "e"]):
        level = [n for n in level if n in slot]
        if not level:
            continue
        rows = [[slot[n]] + ([slot[PARENT[n]]] if PARENT[n] else []) for n in level]
        depth = 2 if PARENT[level[0]] else 1
        prop = runner.tree_step(np.array([TOKENS[n] for n in level]), np.full(len(level), 5 + depth),
                                np.array([slot[n] for n in level]), step_mask(rows), vd)
        out.update({n: dense(prop, r) for r, n in enumerate(level)})
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tree_branches_match_chains(variant):
    model = make_draft(variant)
    vd = model.spec.draft_vocab
    runner, _, _ = prefilled(model)
    tree = run_tree(runner, vd, SLOT)
    for leaf in ("c", "d", "e"):
        branch = [PARENT[leaf], leaf]
        runner, _, _ = prefilled(model)
        alone = run_tree(runner, vd, {n: 5 - i for i, n in enumerate(branch)})  # other slots
        for node in branch:
            assert_close(tree[node], alone[node], atol=1e-9)


@pytest.mark.parametrize("variant", ["cross", "concat", "none"])
def test_tree_mask_matters(variant):
    """Sanity of the oracle above: letting c read its uncle b changes c."""
    model = make_draft(variant)
    runner, _, _ = prefilled(model)
    tree = run_tree(runner, model.spec.draft_vocab, SLOT)
    prop = runner.tree_step(np.array([TOKENS["c"]]), np.array([7]), np.array([1]),
                            step_mask([[1, 2, 0]]), model.spec.draft_vocab)
    assert not np.allclose(dense(prop)[np.isfinite(tree["c"])], tree["c"][np.isfinite(tree["c"])])


@pytest.mark.parametrize("variant", SINGLE_LAYER)
def test_tree_nodes_read_draft_features(variant):
    """Oracle for feature autoregression: a node at depth d equals the teacher-forced pass over its
    path in which the features of the root and of the node's ancestors are the draft's own outputs."""
    model = make_draft(variant)
    runner, ids, feats = prefilled(model)
    tree = run_tree(runner, model.spec.draft_vocab, SLOT)
    for leaf in ("c", "d", "e"):
        path = [int(ids[5]), TOKENS[PARENT[leaf]], TOKENS[leaf]]
        seq, features = list(ids[:5]), torch.as_tensor(feats[:5], dtype=torch.float64)
        for depth, tok in enumerate(path):
            seq.append(tok)
            with torch.no_grad():
                out = model(embed(model, seq)[None], features[None])
            if depth:
                node = PARENT[leaf] if depth == 1 else leaf
                assert_close(tree[node], full_logprobs(model, embed(model, seq), features.numpy())[-1])
            features = torch.cat((features, out.features[0, -1:]))


@pytest.mark.parametrize("variant", ["cross", "concat"])
def test_vtc_ratio_one_equals_no_vtc_and_pruned_stream_matches_oracle(variant):
    ids, feats = sample(make_draft(variant))
    scores = np.linspace(0.0, 1.0, T).astype(np.float32)[::-1].copy()
    visual = np.array([0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    plain = PrefillResult(np.zeros(V, np.float32), feats[:8])
    with_vis = PrefillResult(np.zeros(V, np.float32), feats[:8], visual_scores=scores[:8], visual_mask=visual[:8])
    full_runner = make_runner(make_draft(variant))
    a = full_runner.prefill(plain, ids[:8], int(ids[8]), V)
    b = full_runner.prefill(with_vis, ids[:8], int(ids[8]), V)
    assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.logprobs, b.logprobs)

    model = make_draft(variant, visual_keep_ratio=0.5)  # same weights, 6 visual -> keep 3 (1, 2, 3)
    runner = make_runner(model)
    kept = torch.tensor([0, 1, 2, 3, 7, 8, 9])
    oracle = full_logprobs(model, embed(model, ids)[kept], feats, positions=kept)
    assert_close(dense(runner.prefill(with_vis, ids[:8], int(ids[8]), V)), oracle[5])
    assert_close(dense(runner.advance(ids[9:10], feats[8:9], V)), oracle[6])
    assert not np.allclose(dense(a), oracle[5])


def test_runs_inside_the_runtime_tree_builders():
    model = make_draft("cross")
    runner = TorchDraftRunner(model, TARGET, max_context=32, scratch_slots=16, max_depth=5)
    ids, feats = sample(model)
    proposal = runner.prefill(PrefillResult(np.zeros(V, np.float32), feats), ids, 3, 4)
    tree = dynamic_tree(TreeSpec.dynamic(top_k=4, depth=4, node_budget=12), runner, 3, proposal, T)
    assert tree.size == 12 and tree.valid.all()
    spec = TreeSpec.static([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], top_k=3)
    proposal = runner.advance(np.array([5]), feats[:1], 3)
    tree = static_tree(spec, runner, 5, proposal, T + 1)
    assert tree.size == 7


def test_mismatched_target_refused_with_both_values():
    model = make_draft("cross")
    with pytest.raises(SpecMismatchError) as info:
        TorchDraftRunner(model, TargetDims(hidden_size=64, vocab_size=V, num_layers=4), 16, 6, 3)
    assert "hidden_size=32" in str(info.value) and "hidden_size=64" in str(info.value)
    with pytest.raises(SpecMismatchError, match="vocab_size=51"):
        TorchDraftRunner(model, TargetDims(hidden_size=H, vocab_size=51, num_layers=4), 16, 6, 3)
    with pytest.raises(SpecMismatchError, match=r"\(2,\)"):
        TorchDraftRunner(model, TargetDims(hidden_size=H, vocab_size=V, num_layers=4, feature_layers=(2,)), 16, 6, 3)
    runner, (ids, feats) = make_runner(model), sample(model)
    with pytest.raises(SpecMismatchError, match=r"draft expects \(4, 32\)"):
        runner.prefill(PrefillResult(np.zeros(V, np.float32), feats[:4, :16]), ids[:4], 1, 3)


def test_over_budget_requests_refused():
    model = make_draft("cross")
    runner, (ids, feats) = make_runner(model), sample(model)
    with pytest.raises(SpecMismatchError, match="before prefill"):
        runner.tree_step(ids[:1], np.array([1]), np.array([0]), step_mask([[0]]), 3)
    with pytest.raises(CapacityError):
        make_runner(model, max_context=8).prefill(PrefillResult(np.zeros(V, np.float32), feats), ids, 1, 3)
    runner.prefill(PrefillResult(np.zeros(V, np.float32), feats[:5]), ids[:5], 1, 3)
    cases = [
        (np.array([6]), np.array([6]), step_mask([[0]], 6)),  # slot beyond the scratch area
        (np.array([6]), np.array([0]), step_mask([[0]], 7)),  # mask wider than the scratch area
        (np.array([9]), np.array([0]), step_mask([[0]])),  # depth 4 > max_depth 3
        (np.array([5]), np.array([0]), step_mask([[0]])),  # depth 0: the root's own position
        (np.array([6, 6]), np.array([1, 1]), step_mask([[1], [1]])),  # repeated slot
    ]
    for positions, slots, mask in cases:
        with pytest.raises(CapacityError):
            runner.tree_step(ids[: len(slots)], positions, slots, mask, 3)
    with pytest.raises(CapacityError, match="top_k"):
        runner.tree_step(ids[:1], np.array([6]), np.array([0]), step_mask([[0]]), V + 1)
    with pytest.raises(CapacityError, match="max_context"):
        runner.advance(np.zeros(12, np.int64), np.zeros((12, H), np.float32), 3)  # root 5 + 12 > 16


def test_tree_mask_reading_unwritten_or_same_call_slots_refused():
    model = make_draft("cross")
    runner, ids, _ = prefilled(model)
    with pytest.raises(SpecMismatchError, match="slot 3"):
        runner.tree_step(ids[:1], np.array([7]), np.array([0]), step_mask([[0, 3]]), 3)
    with pytest.raises(SpecMismatchError, match="ancestors first"):
        runner.tree_step(ids[:2], np.array([6, 7]), np.array([0, 1]), step_mask([[0], [0, 1]]), 3)


def test_reduced_vocab_proposes_target_ids():
    model = make_draft("cross-deep-narrow")
    runner, ids, _ = prefilled(model)
    prop = runner.tree_step(ids[:2], np.array([6, 6]), np.array([0, 1]), step_mask([[0], [1]]), 5)
    assert prop.token_ids.shape == (2, 5) and prop.logprobs.dtype == np.float32
    assert np.isin(prop.token_ids, model.d2t.numpy()).all()
    assert (np.diff(prop.logprobs, axis=1) <= 0).all()


def test_float32_draft_matches_teacher_forced():
    model = make_draft("cross").float()
    runner, (ids, feats) = make_runner(model), sample(model)
    with torch.no_grad():
        out = model(model.embed(torch.as_tensor(ids))[None], torch.as_tensor(feats)[None])
    oracle = torch.log_softmax(out.logits[0].double(), -1).numpy()
    result = PrefillResult(logits=np.zeros(V, np.float32), features=feats[:6])
    assert_close(dense(runner.prefill(result, ids[:6], int(ids[6]), V)), oracle[6])
    assert_close(dense(runner.advance(ids[7:10], feats[6:9], V)), oracle[9])
