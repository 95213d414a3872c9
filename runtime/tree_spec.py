"""`TreeSpec`: the shape of a draft tree as data (kind, top-k, depth, node budget, static choices,
min_prob), its named presets (`TREE_PRESETS`) and JSON form.

Place in the data flow: search chooses one, export sizes the draft's scratch buffers by it and writes
it into the manifest, and the loop hands it to the builders of `runtime/tree.py` (which re-exports
these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.errors import SpecMismatchError

TREE_KINDS = ("static", "dynamic")


def _sorted_choices(choices: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """Sorts paths breadth-first (by length, then ranks), so parents precede children."""
    return tuple(sorted((tuple(int(r) for r in c) for c in choices), key=lambda c: (len(c), c)))


@dataclass(frozen=True)
class TreeSpec:
    """The shape of the draft tree; what search chooses, export sizes buffers for, and the loop reads.

    Attributes:
        kind: "static" (a fixed tree of child ranks) or "dynamic" (EAGLE-2, chosen by draft scores).
        top_k: K, continuations the draft proposes per node (static: more than the largest rank).
        depth: deepest node below the root (root depth 0); the longest accepted run is `depth`.
        node_budget: N, nodes one verify call takes, root included.
        choices: static trees only: the non-root nodes as paths of child ranks from the root, e.g.
            ((0,), (1,), (0, 0)) is root -> {top-1, top-2}, top-1 -> top-1. Stored sorted.
        min_prob: dynamic trees only: candidates whose cumulative draft probability is below it are
            left out, and the tree stops growing at a depth where no frontier node reaches it; the
            tree then holds fewer than N nodes (verify runs on what is left). 0: always N nodes.
            With a calibrated draft (`runtime/tree_calibration.py`) the probability compared is the
            estimated acceptance by the target.
            Worth it where each verified node costs (a CPU): a node pays when its acceptance
            probability times t_AR exceeds the extra verify time it costs.
    """

    kind: str
    top_k: int
    depth: int
    node_budget: int
    choices: tuple[tuple[int, ...], ...] = field(default=())
    min_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TREE_KINDS:
            raise SpecMismatchError(f"Unknown tree kind {self.kind!r}.", hint=f"Use one of {TREE_KINDS}.")
        if self.top_k < 1 or self.depth < 1 or self.node_budget < 2:
            raise SpecMismatchError(
                "A tree needs top_k >= 1, depth >= 1 and node_budget >= 2.",
                note=f"top_k={self.top_k}, depth={self.depth}, node_budget={self.node_budget}",
            )
        if not 0.0 <= self.min_prob < 1.0:
            raise SpecMismatchError("A tree's min_prob must lie in [0, 1).", note=f"min_prob={self.min_prob}")
        if self.kind == "static":
            object.__setattr__(self, "choices", _sorted_choices(self.choices))
            self._check_static()
            if self.min_prob:
                raise SpecMismatchError("A static tree takes no min_prob.", hint='Use kind="dynamic".')
        elif self.choices:
            raise SpecMismatchError("A dynamic tree takes no choices.", hint='Use kind="static".')

    def _check_static(self) -> None:
        paths = set(self.choices)
        bad = [c for c in self.choices if not c or (len(c) > 1 and c[:-1] not in paths)]
        if bad or len(paths) != len(self.choices):
            raise SpecMismatchError(
                "Static tree choices must be distinct, non-empty and closed under prefixes.",
                note=f"offending paths: {bad[:4] or 'duplicates'}",
            )
        max_rank = max(max(c) for c in self.choices)
        depth = max(len(c) for c in self.choices)
        if max_rank >= self.top_k or depth != self.depth or len(self.choices) + 1 != self.node_budget:
            raise SpecMismatchError(
                "Static tree choices disagree with top_k, depth or node_budget.",
                note=f"choices give max rank {max_rank}, depth {depth}, N {len(self.choices) + 1}; "
                f"spec says top_k {self.top_k}, depth {self.depth}, N {self.node_budget}",
                hint="Build static specs with TreeSpec.static(choices).",
            )

    @classmethod
    def static(cls, choices, top_k: int | None = None) -> TreeSpec:
        """A static tree from child-rank paths; derives depth, N and (by default) top_k."""
        choices = _sorted_choices(tuple(tuple(c) for c in choices))
        top_k = top_k or max(max(c) for c in choices) + 1
        depth = max(len(c) for c in choices)
        return cls("static", top_k, depth, len(choices) + 1, choices)

    @classmethod
    def chain(cls, depth: int) -> TreeSpec:
        """A single path of `depth` top-1 nodes (N = depth + 1)."""
        return cls.static([(0,) * d for d in range(1, depth + 1)])

    @classmethod
    def dynamic(cls, top_k: int, depth: int, node_budget: int, min_prob: float = 0.0) -> TreeSpec:
        """An EAGLE-2 dynamic tree (paper setting: top_k 4, depth 6, node_budget 32), optionally pruned
        of candidates below `min_prob` cumulative draft probability."""
        return cls("dynamic", top_k, depth, node_budget, min_prob=min_prob)

    def to_dict(self) -> dict:
        """JSON-ready fields (manifests, reports); `min_prob` only when set, as older readers expect."""
        out = {"kind": self.kind, "top_k": self.top_k, "depth": self.depth, "node_budget": self.node_budget,
               "choices": [list(c) for c in self.choices]}
        if self.min_prob:
            out["min_prob"] = self.min_prob
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TreeSpec:
        """Inverse of `to_dict` (also reads sections written before `min_prob` existed)."""
        if data["kind"] == "static":
            return cls.static(tuple(tuple(c) for c in data["choices"]), top_k=int(data["top_k"]))
        return cls.dynamic(int(data["top_k"]), int(data["depth"]), int(data["node_budget"]),
                           float(data.get("min_prob", 0.0)))

    @classmethod
    def from_name(cls, name: str) -> TreeSpec:
        """A named preset from `TREE_PRESETS`."""
        if name not in TREE_PRESETS:
            raise SpecMismatchError(
                f"Unknown tree preset {name!r}.", hint=f"Use one of {sorted(TREE_PRESETS)}."
            )
        return TREE_PRESETS[name]

    @property
    def parents(self) -> np.ndarray:
        """Static trees: [N] int64 parent node index of each node (-1 for the root)."""
        index = {c: j + 1 for j, c in enumerate(self.choices)}
        return np.array([-1] + [index.get(c[:-1], 0) for c in self.choices], dtype=np.int64)

    @property
    def step_width(self) -> int:
        """n, the nodes one `tree_step` call takes (fixed for the spec)."""
        if self.kind == "dynamic":
            return self.top_k
        internal = {c[:-1] for c in self.choices if len(c) > 1}
        per_level = np.bincount([len(c) for c in internal], minlength=2)
        return int(per_level.max())

    @property
    def scratch_slots(self) -> int:
        """S, the draft scratch slots a tree needs (width of `tree_step`'s mask)."""
        if self.kind == "dynamic":
            return (self.depth - 1) * self.top_k
        return self.node_budget - 1


TREE_PRESETS: dict[str, TreeSpec] = {
    "chain-4": TreeSpec.chain(4),
    "eagle2": TreeSpec.dynamic(top_k=4, depth=6, node_budget=32),
    "dynamic-small": TreeSpec.dynamic(top_k=4, depth=4, node_budget=16),
    "static-16": TreeSpec.static(
        [
            (0,),
            (1,),
            (2,),
            (0, 0),
            (0, 1),
            (1, 0),
            (0, 0, 0),
            (0, 0, 1),
            (0, 1, 0),
            (1, 0, 0),
            (0, 0, 0, 0),
            (0, 0, 0, 1),
            (0, 0, 1, 0),
            (0, 1, 0, 0),
            (0, 0, 0, 0, 0),
        ]
    ),
}
