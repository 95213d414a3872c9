"""DreamDraft: cached steps vs the teacher-forced pass, the one-step shift, the null key, shared
weights, the reduced vocabulary and checkpoints. Tiny random weights in float64."""

from __future__ import annotations

import json

import pytest
import torch

from dream_s_edge.draft import DraftSpec, DreamDraft, TargetDims, build_vocab_map, load_draft, save_draft
from dream_s_edge.draft.checkpoint import convert_draft
from dream_s_edge.draft.masks import causal_mask, shifted_memory_mask
from runtime.errors import ModelLoadError, SpecMismatchError, UserInputError

H, V, T = 32, 50, 10
TARGET = TargetDims(hidden_size=H, vocab_size=V, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=64)

VARIANTS = {
    "cross": {"interaction": "cross_attention"},
    "cross-deep-narrow": {"interaction": "cross_attention", "num_layers": 3, "cross_attention_position": 1,
                          "hidden_size": 24, "early_feature_block": 1, "draft_vocab_size": 30},
    "cross-two-layers": {"interaction": "cross_attention", "feature_layers": (2, 4)},
    "concat": {"interaction": "concat", "num_layers": 1},
    "concat-eagle3": {"interaction": "concat", "feature_layers": (1, 2, 4), "hidden_size": 24,
                      "draft_vocab_size": 30},
    "none": {"interaction": "none"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights everywhere, gates and null entries included (so no block is the identity)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.3 * noise)


def make_draft(variant: str = "cross", seed: int = 0, dtype=torch.float64) -> DreamDraft:
    spec = DraftSpec.from_name("dream-default", TARGET, visual_keep_ratio=1.0, **VARIANTS[variant])
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(V, H, generator=g)
    head = 0.3 * torch.randn(V, H, generator=g)
    d2t = build_vocab_map(torch.rand(V, generator=g), spec.draft_vocab_size) if spec.draft_vocab_size else None
    model = DreamDraft(spec, embed, head, d2t)
    randomize(model, g)
    return model.to(dtype).eval()


def sample_inputs(model: DreamDraft, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (1, T), generator=g)
    features = torch.randn(1, T, model.spec.feature_dim, generator=g, dtype=torch.float64)
    return ids, features


def cached_steps(model: DreamDraft, embeds, features):
    """One token at a time against preallocated buffers, as a runner does (memory filled upfront)."""
    spec, width = model.spec, T + 3  # spare slots: masks must hide them
    cache = [(torch.zeros(1, spec.num_kv_heads, width, spec.head_dim, dtype=torch.float64),
              torch.zeros(1, spec.num_kv_heads, width, spec.head_dim, dtype=torch.float64))
             for _ in model.blocks]
    memory = model.memory_from_target(features) if model.feat_in is not None else None
    memory_kv = None
    if model.cross is not None:
        k, v = model.project_memory(memory)
        nk, nv = model.cross.null_kv(1, k.dtype)
        pad = torch.zeros(1, spec.num_kv_heads, 2, spec.head_dim, dtype=k.dtype)
        memory_kv = (torch.cat((nk, k, pad), 2), torch.cat((nv, v, pad), 2))  # [1, Hkv, 1 + T + 2, D]
    outs = []
    for t in range(T):
        pos = torch.tensor([t])
        previous = model.previous_memory(memory, pos) if spec.interaction == "concat" else None
        x = model.input_stream(embeds[:, t:t + 1], previous)
        mem_mask = shifted_memory_mask(pos, T + 3)
        outs.append(model.decode(x, pos, causal_mask(1, width, t), memory_kv, mem_mask, cache, pos))
    return outs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_steps_match_teacher_forced(variant):
    model = make_draft(variant)
    ids, features = sample_inputs(model)
    embeds = model.embed(ids)
    with torch.no_grad():
        full = model(embeds, features)
        steps = cached_steps(model, embeds, features)
    assert full.logits.shape == (1, T, model.spec.draft_vocab)
    assert full.features.shape == (1, T, H) and full.early.shape == (1, T, H)
    for name in ("logits", "hidden", "features", "early"):
        stepped = torch.cat([getattr(o, name) for o in steps], dim=1)
        assert (stepped - getattr(full, name)).abs().max() <= 1e-5, name


@pytest.mark.parametrize("variant", ["cross", "cross-two-layers", "concat", "concat-eagle3"])
@pytest.mark.parametrize("k", [0, 3, 7])
def test_future_features_do_not_change_the_past(variant, k):
    """Position p reads features 0 .. p - 1: changing features k.. leaves positions 0 .. k unchanged."""
    model = make_draft(variant)
    ids, features = sample_inputs(model)
    changed = features.clone()
    changed[:, k:] += 5.0
    with torch.no_grad():
        a, b = model(model.embed(ids), features), model(model.embed(ids), changed)
    assert torch.isfinite(a.logits).all() and torch.isfinite(b.logits).all()
    assert torch.equal(a.logits[:, : k + 1], b.logits[:, : k + 1])
    assert not torch.allclose(a.logits[:, k + 1], b.logits[:, k + 1])


def test_query_zero_reads_the_null_key():
    model = make_draft("cross")
    ids, features = sample_inputs(model)
    with torch.no_grad():
        before = model(model.embed(ids), features).logits
        model.cross.null_v.add_(1.0)
        after = model(model.embed(ids), features).logits
    assert torch.isfinite(before[:, 0]).all()
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_fresh_cross_attention_block_is_identity():
    spec = DraftSpec.from_name("dream-default", TARGET)
    model = DreamDraft(spec, torch.randn(V, H), torch.randn(V, H)).double()
    x = torch.randn(1, 4, H, dtype=torch.float64)
    k, v = model.project_memory(torch.randn(1, 3, H, dtype=torch.float64))
    mask = shifted_memory_mask(torch.arange(4), 3)
    assert torch.equal(model.cross(x, (k, v), mask), x)


def test_vtc_positions_keep_absolute_rope_and_shift():
    """A pruned stream at its original positions equals the full stream with ratio 1 where unpruned
    tokens see the same keys: here the kept prefix 0..4 is identical to the unpruned prefix."""
    model = make_draft("cross")
    ids, features = sample_inputs(model)
    embeds = model.embed(ids)
    kept = torch.tensor([0, 1, 2, 3, 4, 7, 9])
    with torch.no_grad():
        full = model(embeds, features)
        pruned = model(embeds[:, kept], features, positions=kept)
    assert torch.allclose(pruned.logits[:, :5], full.logits[:, :5], atol=1e-12)
    assert not torch.allclose(pruned.logits[:, 5], full.logits[:, 7])


def test_shared_weights_are_frozen_buffers():
    model = make_draft("cross-deep-narrow")
    names = {n for n, _ in model.named_parameters()}
    assert not any("embed_weight" in n or "lm_head" in n for n in names)
    state = model.state_dict()
    assert "embed_weight" not in state and "lm_head_weight" not in state and "draft_head" not in state
    assert "d2t" in state


def test_build_vocab_map_keeps_most_frequent():
    counts = torch.tensor([5, 0, 9, 9, 1, 7])
    assert build_vocab_map(counts, 3).tolist() == [2, 3, 5]
    assert build_vocab_map(counts, 4).tolist() == [0, 2, 3, 5]
    with pytest.raises(SpecMismatchError):
        build_vocab_map(counts, 7)


def test_reduced_vocab_logits_are_full_head_rows():
    model = make_draft("cross-deep-narrow")
    ids, features = sample_inputs(model)
    with torch.no_grad():
        out = model(model.embed(ids), features)
    full = out.features @ model.lm_head_weight.T  # [1, T, V]
    assert torch.allclose(out.logits, full[..., model.d2t], atol=1e-12)


@pytest.mark.parametrize(
    "embed_shape, head_shape, d2t, values",
    [
        ((V, 16), (V, H), None, ("(50, 16)", "[50, 32]")),
        ((V, H), (60, H), None, ("(60, 32)", "[50, 32]")),
        ((V, H), (V, H), torch.arange(5), ("draft_vocab_size=None", "d2t entries=5")),
    ],
)
def test_mismatched_shared_weights_refused(embed_shape, head_shape, d2t, values):
    spec = DraftSpec.from_name("dream-default", TARGET)
    with pytest.raises(SpecMismatchError) as info:
        DreamDraft(spec, torch.zeros(embed_shape), torch.zeros(head_shape), d2t)
    for value in values:
        assert value in str(info.value)


@pytest.mark.parametrize("variant", ["cross-deep-narrow", "concat-eagle3"])
def test_save_load_round_trip(tmp_path, variant):
    model = make_draft(variant)
    save_draft(tmp_path / "draft", model, model.spec, target_name="tiny")
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config["target"]["hidden_size"] == H and config["target"]["name"] == "tiny"
    loaded = load_draft(tmp_path / "draft", model.embed_weight, model.lm_head_weight)
    assert loaded.spec == model.spec and torch.equal(loaded.d2t, model.d2t)
    ids, features = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded(loaded.embed(ids), features).logits, model(model.embed(ids), features).logits)
    with pytest.raises(SpecMismatchError):
        load_draft(tmp_path / "draft", torch.zeros(V, 16), torch.zeros(V, 16))
    with pytest.raises(ModelLoadError):
        load_draft(tmp_path / "missing", model.embed_weight, model.lm_head_weight)


def test_converted_draft_is_half_the_size_and_runs_like_the_original(tmp_path):
    model = make_draft("cross-deep-narrow", dtype=torch.float32)
    save_draft(tmp_path / "fp32", model, model.spec)
    convert_draft(tmp_path / "fp32", tmp_path / "fp16", "float16")
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "fp16")}
    assert size["fp16"] < 0.6 * size["fp32"]
    config = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert config["weights_dtype"] == "float16"
    loaded = load_draft(tmp_path / "fp16", model.embed_weight, model.lm_head_weight)
    assert loaded.spec == model.spec and torch.equal(loaded.d2t, model.d2t)  # the integer map is kept exactly
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert b.dtype == a.dtype, name  # cast back to the target's dtype on load
        if a.is_floating_point():
            assert torch.equal(b, a.half().float()), name  # only fp16 rounding, nothing else
    ids, features = sample_inputs(model)
    with torch.no_grad():
        want, got = model(model.embed(ids), features.float()).logits, loaded(loaded.embed(ids), features.float()).logits
    assert (want - got).abs().max() < 1e-2 * want.abs().max()


def test_convert_refuses_bad_requests(tmp_path):
    model = make_draft("cross")
    save_draft(tmp_path / "draft", model, model.spec)
    with pytest.raises(UserInputError, match="dtype"):
        convert_draft(tmp_path / "draft", tmp_path / "out", "int3")
    with pytest.raises(UserInputError, match="overwrite"):
        convert_draft(tmp_path / "draft", tmp_path / "draft")
    with pytest.raises(ModelLoadError):
        convert_draft(tmp_path / "missing", tmp_path / "out")


def test_home_relative_hides_the_home_directory_in_provenance(monkeypatch, tmp_path):
    from pathlib import Path

    from dream_s_edge.draft.checkpoint import home_relative

    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    record = {"data_dir": f"{tmp_path}/runs/data", "nested": [str(tmp_path), f"{tmp_path}x/other"], "steps": 600}
    assert home_relative(record) == {"data_dir": "~/runs/data", "nested": ["~", f"{tmp_path}x/other"], "steps": 600}
    assert home_relative(f"{tmp_path}/a,{tmp_path}/b,/srv/c") == "~/a,~/b,/srv/c"  # train --data A,B,C
