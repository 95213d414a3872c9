"""What the TensorRT runner needs besides TensorRT itself: the manifest's engine section, the
version and device check, profile choice, and binding bookkeeping. Pure Python, tested on CPU.

Place in the data flow: `dream-s-edge build-engines` (`export/trt_build.py`) writes
`manifest.json: engines.<precision>` =

    {"precision": "fp16", "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
     "graphs": {"decoder": {"file": "decoder_fp16_engine", "profiles": [{"name", "axes", "shapes"}, ...]}}}

and lists each engine under `files` (sha256 checked by `Manifest.load`). `runtime/trt_runner.py`
reads it back with `engine_section`, refuses engines built by another TensorRT or for another GPU
(`check_engine_compat`, with the rebuild command), picks a profile per call (`pick_profile`) and
binds tensor addresses only when they change (`TensorBindings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import CapacityError, EngineError, ManifestError

PRECISIONS = ("fp16", "int8", "int4-weight-only")
ENGINE_FIELDS = ("precision", "tensorrt_version", "gpu_name", "compute_capability", "graphs")


@dataclass(frozen=True)
class DeviceInfo:
    """Where an engine is built or loaded: TensorRT version, GPU name, compute capability "8.7"."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def rebuild_command(folder, precision: str) -> str:
    """The command that rebuilds the engines of `folder` on this machine."""
    return f"dream-s-edge build-engines --artifacts {folder} --precision {precision}"


def engine_section(data: dict, precision: str | None = None) -> dict:
    """The manifest's `engines.<precision>` entry (the only one when precision is None).

    Raises:
        ManifestError: no engines, an unknown precision, several precisions and none chosen, or a
            missing field (named).
    """
    engines = data.get("engines") or {}
    if not engines:
        raise ManifestError("The manifest lists no TensorRT engines.",
                            hint="build them on this device: dream-s-edge build-engines --artifacts DIR")
    if precision is None:
        if len(engines) > 1:
            raise ManifestError("The manifest lists engines of several precisions.", note=f"{sorted(engines)}",
                                hint="choose one with --precision")
        precision = next(iter(engines))
    if precision not in engines:
        raise ManifestError(f"The manifest has no {precision} engines.", note=f"built: {sorted(engines)}",
                            hint=f"dream-s-edge build-engines --artifacts DIR --precision {precision}")
    section = engines[precision]
    for key in ENGINE_FIELDS:
        if key not in section:
            raise ManifestError(f"The manifest misses the field 'engines.{precision}.{key}'.")
    return section


def check_engine_compat(section: dict, here: DeviceInfo, folder=".") -> None:
    """Refuses engines built by another TensorRT version or for another GPU.

    TensorRT plans are tied to the exact TensorRT version and to the GPU model they were tuned on
    (we build without the version- or hardware-compatibility flags, which cost speed).

    Raises:
        EngineError: naming both versions / devices and the rebuild command.
    """
    built = DeviceInfo(str(section["tensorrt_version"]), str(section["gpu_name"]), str(section["compute_capability"]))
    hint = f"rebuild them here: {rebuild_command(folder, section['precision'])}"
    if built.tensorrt_version != here.tensorrt_version:
        raise EngineError("The TensorRT engines were built by another TensorRT version.",
                          note=f"engines {built.tensorrt_version}, installed {here.tensorrt_version}", hint=hint)
    if (built.compute_capability, built.gpu_name) != (here.compute_capability, here.gpu_name):
        raise EngineError(
            "The TensorRT engines were built for another GPU.",
            note=f"engines {built.gpu_name} (sm {built.compute_capability}), "
                 f"this device {here.gpu_name} (sm {here.compute_capability})",
            hint=hint,
        )


def pick_profile(profiles: list[dict], sizes: dict[str, int], graph: str = "graph") -> int:
    """Index of the first profile whose axis ranges hold every size in `sizes` (e.g. new, past).

    Args:
        profiles: the manifest's profile entries ({"name", "axes": {axis: [min, opt, max]}}).
        sizes: axis -> value of this call; axes a profile does not name are not constrained.

    Raises:
        CapacityError: no profile fits (the numbers and the ranges named).
    """
    for i, entry in enumerate(profiles):
        axes = entry["axes"]
        if all(axes[a][0] <= v <= axes[a][2] for a, v in sizes.items() if a in axes):
            return i
    ranges = "; ".join(f"{p['name']} {p['axes']}" for p in profiles)
    raise CapacityError(f"No optimization profile of the {graph} engine fits this call.",
                        note=f"sizes {sizes}; profiles {ranges}", hint="rebuild the engines with larger limits")


@dataclass
class TensorBindings:
    """Sets shapes and addresses on an execution context only when they change.

    Re-setting an unchanged address is not free, and stable addresses are what keeps a captured
    CUDA graph valid: `changed` says whether anything moved since the last `clear_changed`.

    Args:
        context: anything with `set_input_shape(name, shape) -> bool` and
            `set_tensor_address(name, ptr) -> bool` (a TensorRT `IExecutionContext`).
    """

    context: object
    shapes: dict[str, tuple] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # context calls actually made (for tests and profiling)
    changed: bool = True

    def shape(self, name: str, shape: tuple) -> None:
        """Sets an input's shape if it differs from the last one set."""
        shape = tuple(int(d) for d in shape)
        if self.shapes.get(name) == shape:
            return
        if not self.context.set_input_shape(name, shape):
            raise EngineError(f"TensorRT refused the shape of input {name}.", note=f"shape {shape}",
                              hint="the shape lies outside the engine's optimization profile")
        self.shapes[name] = shape
        self.calls += 1
        self.changed = True

    def address(self, name: str, ptr: int) -> None:
        """Sets a tensor's device address if it differs from the last one set."""
        if self.addresses.get(name) == ptr:
            return
        if not self.context.set_tensor_address(name, int(ptr)):
            raise EngineError(f"TensorRT refused the address of tensor {name}.", note=f"address {ptr:#x}")
        self.addresses[name] = int(ptr)
        self.calls += 1
        self.changed = True

    def clear_changed(self) -> None:
        self.changed = False


def compaction_moves(accepted, prev_len: int) -> list[tuple[int, int]]:
    """(src slot, dst slot) copies that compact the accepted nodes after the committed slots.

    Node i of the accepted path (ascending node index, root first) moves from `prev_len +
    accepted[i]` to `prev_len + i`. Moves in this order never overwrite a later source, since
    accepted is strictly increasing (dst_i = prev_len + i < prev_len + accepted[j] for j > i).
    A node already in place is skipped, so a chain needs no copy at all.
    """
    moves = []
    last = -1
    for i, node in enumerate(int(a) for a in accepted):
        if node <= last:
            raise ValueError(f"accepted node indices must increase: {list(accepted)}")
        last = node
        if node != i:
            moves.append((prev_len + node, prev_len + i))
    return moves
