"""TensorRT optimization profiles as typed objects, derived from the manifest (never literals).

Place in the data flow: `manifest.json` (limits, tree, draft section, io_contract) ->
`graph_profiles(data, graph)` -> [`NamedProfile`] -> `export/trt_build.py` (one
`IOptimizationProfile` each) and the manifest's `engines.<precision>.profiles` (which the TensorRT
runner reads back to pick a profile per call, `runtime/trt_engines.py`).

Profiles are written per *axis* first (`AxisRange(min, opt, max)` for "new", "past", "memory",
"images"), then expanded over every input of the graph's contract into per-tensor
`ShapeTuple(min, opt, max)`; a composite axis such as "past + new" is the sum of its parts. Two
profiles per decoder-like graph, as TensorRT Edge-LLM builds them:

    decoder      prefill  new 1 .. C            past 0 (a prompt starts from an empty cache)
                 verify   new 1 .. N (opt N)    past 0 .. C (opt C / 2)
    draft_step   prefill  new 1 .. C + 1        past 0 .. S (the scratch area precedes the stream)
                 step     new 1 .. max(K, D + 1, width)   past 0 .. S + C + 1
    draft_memory memory 1 .. C + 1              vision  images 1 .. max_images

C = limits.max_context, N = limits.node_budget, S = draft.scratch_slots, D = draft.max_depth,
K = draft.top_k. Profile order is the runner's preference: the first that fits a call is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import ExportError

PREFILL_OPT = 256  # typical prompt length with one image (64 visual tokens + text), capped by C
MAX_IMAGES = 2


@dataclass(frozen=True)
class AxisRange:
    """min <= opt <= max of one symbolic axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 0 <= self.min <= self.opt <= self.max:
            raise ExportError("An axis range needs 0 <= min <= opt <= max.", note=f"{self}")

    def __add__(self, other: AxisRange) -> AxisRange:
        return AxisRange(self.min + other.min, self.opt + other.opt, self.max + other.max)

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class ShapeTuple:
    """The (min, opt, max) shapes of one input, as `IOptimizationProfile.set_shape` takes them."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        ok = len(self.min) == len(self.opt) == len(self.max) and all(
            a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True))
        if not ok:
            raise ExportError("A shape tuple needs min <= opt <= max in every axis.", note=f"{self}")

    def __iter__(self):
        return iter((self.min, self.opt, self.max))

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass
class Profile:
    """Input name -> ShapeTuple; `add` chains (Polygraphy's `Profile.add`)."""

    shapes: dict[str, ShapeTuple] = field(default_factory=dict)

    def add(self, name: str, min: tuple, opt: tuple, max: tuple) -> Profile:  # noqa: A002 (TensorRT's words)
        self.shapes[name] = ShapeTuple(tuple(min), tuple(opt), tuple(max))
        return self

    def __getitem__(self, name: str) -> ShapeTuple:
        return self.shapes[name]

    def to_dict(self) -> dict:
        return {name: s.to_dict() for name, s in self.shapes.items()}


@dataclass(frozen=True)
class NamedProfile:
    """One optimization profile of a graph: its name, its axis ranges, and the per-input shapes."""

    name: str
    axes: dict[str, AxisRange]
    profile: Profile

    def to_dict(self) -> dict:
        axes = {k: [r.min, r.opt, r.max] for k, r in self.axes.items()}
        return {"name": self.name, "axes": axes, "shapes": self.profile.to_dict()}


def axis_ranges(data: dict, graph: str, max_images: int = MAX_IMAGES) -> list[tuple[str, dict[str, AxisRange]]]:
    """[(profile name, {axis: AxisRange})] of one graph, from the manifest's limits and draft section.

    Raises:
        ExportError: a graph this module has no profiles for, or a draft graph without a draft section.
    """
    C, N = int(data["limits"]["max_context"]), int(data["limits"]["node_budget"])
    prefill_opt = min(PREFILL_OPT, C)
    if graph == "vision":
        return [("vision", {"images": AxisRange(1, 1, max_images)})]
    if graph == "decoder":
        return [("prefill", {"new": AxisRange(1, prefill_opt, C), "past": AxisRange(0, 0, 0)}),
                ("verify", {"new": AxisRange(1, N, N), "past": AxisRange(0, C // 2, C)})]
    draft = data.get("draft")
    if draft is None:
        raise ExportError(f"The manifest has no draft section for the {graph} graph.")
    S, D, K = int(draft["scratch_slots"]), int(draft["max_depth"]), int(draft["top_k"])
    if graph == "draft_memory":
        return [("memory", {"memory": AxisRange(1, prefill_opt, C + 1)})]
    if graph == "draft_step":
        step_new = max(K, D + 1, _step_width(data))
        return [("step", {"new": AxisRange(1, K, step_new), "past": AxisRange(0, S + C // 2, S + C + 1),
                          "memory": AxisRange(1, S + 2 + C // 2, S + 2 + C)}),
                ("prefill", {"new": AxisRange(1, prefill_opt, C + 1), "past": AxisRange(0, S, S),
                             "memory": AxisRange(1, S + 2 + prefill_opt, S + 2 + C)})]
    raise ExportError(f"No TensorRT profiles are defined for the graph {graph!r}.",
                      hint="graphs: vision, decoder, draft_step, draft_memory")


def _step_width(data: dict) -> int:
    """Nodes one draft tree step takes (TreeSpec.step_width of the manifest's tree)."""
    from runtime.session import tree_from_manifest

    return tree_from_manifest(data["tree"]).step_width


def dim_range(dim, axes: dict[str, AxisRange]) -> AxisRange:
    """One contract dimension (an int, an axis name, or "a + b") -> its AxisRange.

    Raises:
        ExportError: an axis the profile does not define.
    """
    if isinstance(dim, int):
        return AxisRange(dim, dim, dim)
    parts = [p.strip() for p in str(dim).split("+")]
    missing = [p for p in parts if p not in axes]
    if missing:
        raise ExportError(f"The profile defines no range for the axis {missing[0]!r}.", note=f"axes: {sorted(axes)}")
    total = axes[parts[0]]
    for p in parts[1:]:
        total = total + axes[p]
    return total


def tensor_profile(inputs: list[dict], axes: dict[str, AxisRange]) -> Profile:
    """Expands axis ranges over a contract's inputs (dicts with "name" and "shape")."""
    profile = Profile()
    for tensor in inputs:
        ranges = [dim_range(d, axes) for d in tensor["shape"]]
        profile.add(tensor["name"], tuple(r.min for r in ranges), tuple(r.opt for r in ranges),
                    tuple(r.max for r in ranges))
    return profile


def graph_profiles(data: dict, graph: str, max_images: int = MAX_IMAGES) -> list[NamedProfile]:
    """The optimization profiles of one graph of a manifest (`data` is the parsed manifest.json)."""
    inputs = data["io_contract"][graph]["inputs"]
    return [NamedProfile(name, axes, tensor_profile(inputs, axes))
            for name, axes in axis_ranges(data, graph, max_images)]
