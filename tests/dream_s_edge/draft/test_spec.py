"""DraftSpec: presets, validation, JSON round trip and the target check."""

from __future__ import annotations

import json

import pytest

from dream_s_edge.draft.spec import DraftSpec, DraftSpecError, TargetDims, check_target
from runtime.errors import SpecMismatchError

TARGET = TargetDims(hidden_size=32, vocab_size=50, num_layers=4, num_heads=4, num_kv_heads=2,
                    intermediate_size=64)


@pytest.mark.parametrize("name", ["dream-default", "dream-small", "eagle", "eagle3"])
def test_presets_build_for_target(name):
    spec = DraftSpec.from_name(name, TARGET)
    assert spec.target_hidden_size == 32 and spec.target_vocab_size == 50
    assert spec.hidden_size == 32 and spec.num_heads == 4 and spec.num_kv_heads == 2
    assert spec.head_dim == 8
    assert all(0 <= i <= 4 for i in spec.feature_layers)
    check_target(spec, TARGET)


def test_dream_default_is_the_paper_layout():
    spec = DraftSpec.from_name("dream-default", TARGET)
    assert spec.num_layers == 2 and spec.interaction == "cross_attention"
    assert spec.cross_attention_position == 0 and spec.visual_keep_ratio == 0.75
    assert spec.feature_layers == (4,)  # -1 resolved to the post-norm last layer
    assert spec.feature_dim == 32 and spec.draft_vocab == 50


def test_eagle3_concatenates_three_layers():
    spec = DraftSpec.from_name("eagle3", TargetDims(hidden_size=32, vocab_size=50, num_layers=12))
    assert spec.feature_layers == (2, 6, 9) and spec.feature_dim == 96
    assert spec.interaction == "concat"


def test_overrides_and_derived_defaults():
    spec = DraftSpec.from_name("dream-default", TARGET, hidden_size=48, num_heads=6, num_kv_heads=3,
                               num_layers=3, cross_attention_position=2, draft_vocab_size=20)
    assert spec.head_dim == 8 and spec.draft_vocab == 20 and spec.num_layers == 3
    bare = DraftSpec(target_hidden_size=32, target_vocab_size=50, target_num_layers=4)
    assert bare.hidden_size == 32 and bare.ffn_size == 96


def test_json_round_trip():
    spec = DraftSpec.from_name("eagle3", TARGET, visual_keep_ratio=0.5)
    data = json.loads(json.dumps(spec.to_dict()))
    assert DraftSpec.from_dict(data) == spec


def test_from_dict_refuses_unknown_fields():
    data = DraftSpec.from_name("eagle", TARGET).to_dict()
    data["num_experts"] = 4
    with pytest.raises(DraftSpecError, match="num_experts"):
        DraftSpec.from_dict(data)


def test_unknown_preset():
    with pytest.raises(DraftSpecError, match="dream-default"):
        DraftSpec.from_name("medusa", TARGET)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"num_heads": 5}, "num_heads=5"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads=3"),
        ({"num_heads": 32, "num_kv_heads": 32}, "head dim"),
        ({"interaction": "film"}, "film"),
        ({"visual_keep_ratio": 0.0}, "visual_keep_ratio"),
        ({"visual_keep_ratio": 1.5}, "visual_keep_ratio"),
        ({"draft_vocab_size": 51}, "draft_vocab_size"),
        ({"cross_attention_position": 2}, "cross_attention_position"),
        ({"early_feature_block": 2}, "early_feature_block"),
        ({"feature_layers": (5,)}, "feature_layers"),
        ({"feature_layers": ()}, "feature_layers"),
        ({"feature_layers": (4, -1)}, "repeats"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_invalid_specs_refused(overrides, pattern):
    with pytest.raises(DraftSpecError, match=pattern):
        DraftSpec.from_name("dream-default", TARGET, **overrides)


@pytest.mark.parametrize(
    "target, values",
    [
        (TargetDims(hidden_size=64, vocab_size=50, num_layers=4), ("hidden_size=32", "hidden_size=64")),
        (TargetDims(hidden_size=32, vocab_size=51, num_layers=4), ("vocab_size=50", "vocab_size=51")),
        (TargetDims(hidden_size=32, vocab_size=50, num_layers=6), ("num_layers=4", "num_layers=6")),
        (TargetDims(hidden_size=32, vocab_size=50, num_layers=4, feature_layers=(3,)), ("(4,)", "(3,)")),
    ],
)
def test_check_target_names_both_values(target, values):
    spec = DraftSpec.from_name("dream-default", TARGET)
    with pytest.raises(SpecMismatchError) as info:
        check_target(spec, target)
    for value in values:
        assert value in str(info.value)


def test_check_target_resolves_last_layer():
    spec = DraftSpec.from_name("dream-default", TARGET)
    check_target(spec, TargetDims(hidden_size=32, vocab_size=50, num_layers=4, feature_layers=(-1,)))
