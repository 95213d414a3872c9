"""TreeSpec: validation, derived sizes, presets and the JSON round trip."""

from __future__ import annotations

import pytest

from runtime.errors import SpecMismatchError
from runtime.tree_spec import TreeSpec


def test_tree_spec_validation() -> None:
    with pytest.raises(SpecMismatchError, match="closed under prefixes"):
        TreeSpec.static([(0,), (1, 0)])
    with pytest.raises(SpecMismatchError, match="disagree"):
        TreeSpec("static", top_k=2, depth=1, node_budget=5, choices=((0,), (1,)))
    with pytest.raises(SpecMismatchError, match="Unknown tree kind"):
        TreeSpec("bushy", 2, 2, 4)
    with pytest.raises(SpecMismatchError, match="takes no choices"):
        TreeSpec("dynamic", 2, 1, 3, ((0,),))
    spec = TreeSpec.static([(1,), (0,), (0, 0)])
    assert spec.choices == ((0,), (1,), (0, 0)) and spec.top_k == 2 and spec.depth == 2
    assert TreeSpec.from_name("eagle2") == TreeSpec.dynamic(4, 6, 32)
    assert TreeSpec.dynamic(4, 6, 32).scratch_slots == 20
    assert TreeSpec.from_name("static-16").scratch_slots == 15


def test_min_prob_validation_and_round_trip() -> None:
    spec = TreeSpec.dynamic(4, 6, 16, min_prob=0.05)
    assert TreeSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["min_prob"] == 0.05
    plain = TreeSpec.dynamic(4, 6, 16)
    assert "min_prob" not in plain.to_dict() and TreeSpec.from_dict(plain.to_dict()) == plain
    static = TreeSpec.from_name("static-16")
    assert TreeSpec.from_dict(static.to_dict()) == static
    with pytest.raises(SpecMismatchError, match="min_prob"):
        TreeSpec.dynamic(4, 6, 16, min_prob=1.0)
    with pytest.raises(SpecMismatchError, match="min_prob"):
        TreeSpec("static", 1, 1, 2, ((0,),), min_prob=0.1)
