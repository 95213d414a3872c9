"""`dream-s-edge build-engines`: TensorRT engines from an artifact folder's ONNX graphs, on the device.

Data flow::

    manifest.json + <graph>.onnx
      -> (int8 / int4-weight-only) weight-only DequantizeLinear graph  (export/trt_weights.py)
      -> EngineFromOnnx: parse, one optimization profile per NamedProfile (export/trt_profiles.py),
         precision flags, bounded workspace and host (tactic DRAM) memory, shared timing cache
      -> <graph>_<precision>.engine
      -> manifest.json: engines.<precision> {precision, tensorrt_version, gpu_name,
         compute_capability, graphs: {graph: {file, profiles}}} + files.<graph>_<precision>_engine

The timing cache lives beside the user's cache (`~/.cache/dream-s-edge/trt/`), one file per TensorRT
version and compute capability, and is merged after every build, so rebuilding (another precision,
another export of the same shapes) skips the tactic timing it has already done. `tensorrt` is
imported inside the steps that need it; everything else here runs (and is tested) on a CPU.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from export.manifest import file_entries
from export.trt_profiles import MAX_IMAGES, NamedProfile, graph_profiles
from runtime.errors import EngineError
from runtime.manifest import MANIFEST_NAME, Manifest
from runtime.trt_engines import PRECISIONS, DeviceInfo

logger = logging.getLogger(__name__)

ENGINE_GRAPHS = ("vision", "decoder", "draft_step", "draft_memory")
INT4_MIN_VERSION = (10, 0)  # first TensorRT with INT4 weight-only (blocked DequantizeLinear) GEMMs
WEIGHT_BITS = {"fp16": None, "int8": 8, "int4-weight-only": 4}


@dataclass(frozen=True)
class EngineBuildConfig:
    """What `dream-s-edge build-engines` builds."""

    artifacts: Path
    precision: str = "fp16"  # fp16, int8 (weight-only, per channel) or int4-weight-only (blocks of 32)
    workspace_mb: int = 1024  # builder scratch on the device (MemoryPoolType.WORKSPACE)
    host_mb: int = 4096  # host DRAM for tactics (MemoryPoolType.TACTIC_DRAM); unified memory on Jetson
    timing_cache: Path | None = None  # None: ~/.cache/dream-s-edge/trt/timing-<trt>-sm<cc>.cache
    optimization_level: int = 3  # builder optimization level 0..5 (higher: slower builds, maybe faster engines)
    max_images: int = MAX_IMAGES
    graphs: tuple[str, ...] = field(default=ENGINE_GRAPHS)  # those the folder has are built


def parse_version(version: str) -> tuple[int, ...]:
    """"10.3.0.post1" -> (10, 3, 0)."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_precision(precision: str, tensorrt_version: str) -> None:
    """Refuses a precision this TensorRT cannot build.

    Raises:
        EngineError: an unknown precision, or int4 weight-only before TensorRT 10.0.
    """
    if precision not in PRECISIONS:
        raise EngineError(f"Unknown engine precision {precision!r}.", hint=f"use one of {list(PRECISIONS)}")
    if precision == "int4-weight-only" and parse_version(tensorrt_version) < INT4_MIN_VERSION:
        raise EngineError(
            "This TensorRT cannot build int4 weight-only engines.",
            note=f"TensorRT {tensorrt_version}; int4 weight-only needs {'.'.join(map(str, INT4_MIN_VERSION))} or newer",
            hint="use --precision fp16 or int8, or upgrade TensorRT (JetPack 6.1+ ships 10.3)",
        )


def default_timing_cache(device: DeviceInfo) -> Path:
    """The shared timing cache file for this TensorRT version and compute capability."""
    root = Path(os.environ.get("DREAM_S_EDGE_CACHE", Path.home() / ".cache" / "dream-s-edge"))
    return root / "trt" / f"timing-{device.tensorrt_version}-sm{device.compute_capability}.cache"


def engine_file(graph: str, precision: str) -> tuple[str, str]:
    """(manifest files key, file name) of one engine."""
    return f"{graph}_{precision}_engine", f"{graph}_{precision}.engine"


def engine_record(device: DeviceInfo, precision: str, graphs: dict[str, list[NamedProfile]]) -> dict:
    """The manifest's `engines.<precision>` entry (pure; see `runtime/trt_engines.py`)."""
    return {
        "precision": precision,
        "tensorrt_version": device.tensorrt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "graphs": {g: {"file": engine_file(g, precision)[0], "profiles": [p.to_dict() for p in profiles]}
                   for g, profiles in graphs.items()},
    }


def record_engines(folder: Path, record: dict) -> Path:
    """Adds `engines.<precision>` and the engine files (with sha256) to folder/manifest.json."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.setdefault("engines", {})[record["precision"]] = record
    files = {key: name for key, name in (engine_file(g, record["precision"]) for g in record["graphs"])}
    data["files"].update(file_entries(folder, files))
    path.write_text(json.dumps(data, indent=2) + "\n")
    Manifest.load(folder)  # the runtime's own check
    return path


# ---- the TensorRT steps (GPU only) ------------------------------------------------------------
def trt():
    try:
        import tensorrt
    except ImportError as error:
        raise EngineError("TensorRT is not installed here.",
                          hint="build engines on the device: pip install 'dream-s-edge[trt]' (JetPack ships it)") from error
    return tensorrt


class EngineFromOnnx:
    """Lazy step: an ONNX file (path or callable returning one) -> serialized engine bytes.

    Args:
        onnx_path: the graph.
        profiles: the NamedProfiles, in order (profile i of the engine is profiles[i]).
        config: precision, memory bounds, timing cache, optimization level.
        timing_cache: the cache file to read and merge into.
    """

    def __init__(self, onnx_path, profiles: list[NamedProfile], config: EngineBuildConfig, timing_cache: Path):
        self.onnx_path, self.profiles, self.config, self.timing_cache = onnx_path, profiles, config, timing_cache

    def __call__(self) -> bytes:
        rt = trt()
        log = rt.Logger(rt.Logger.WARNING)
        builder = rt.Builder(log)
        network = builder.create_network(0)
        parser = rt.OnnxParser(network, log)
        path = Path(self.onnx_path() if callable(self.onnx_path) else self.onnx_path)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {path.name}.", note=errors[:800])
        config = self._builder_config(rt, builder)
        cache = self._load_cache(config)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build an engine from {path.name}.",
                              hint="see the TensorRT log above; try a larger --workspace-mb")
        self._save_cache(config, cache)
        return bytes(plan)

    def _builder_config(self, rt, builder):
        cfg, c = builder.create_builder_config(), self.config
        cfg.set_memory_pool_limit(rt.MemoryPoolType.WORKSPACE, c.workspace_mb << 20)
        if hasattr(rt.MemoryPoolType, "TACTIC_DRAM"):
            cfg.set_memory_pool_limit(rt.MemoryPoolType.TACTIC_DRAM, c.host_mb << 20)
        cfg.builder_optimization_level = c.optimization_level
        cfg.set_flag(rt.BuilderFlag.FP16)
        if c.precision == "int8":
            cfg.set_flag(rt.BuilderFlag.INT8)
        if c.precision == "int4-weight-only" and hasattr(rt.BuilderFlag, "INT4"):
            cfg.set_flag(rt.BuilderFlag.INT4)
        for named in self.profiles:
            profile = builder.create_optimization_profile()
            for name, shapes in named.profile.shapes.items():
                profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
            cfg.add_optimization_profile(profile)
        cfg.profiling_verbosity = rt.ProfilingVerbosity.DETAILED  # layer names in IProfiler reports
        return cfg

    def _load_cache(self, cfg):
        data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = cfg.create_timing_cache(data)
        cfg.set_timing_cache(cache, ignore_mismatch=False)
        return cache

    def _save_cache(self, cfg, cache) -> None:
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        if self.timing_cache.is_file():  # another build may have added entries meanwhile
            cache.combine(cfg.create_timing_cache(self.timing_cache.read_bytes()), ignore_mismatch=True)
        self.timing_cache.write_bytes(bytes(cache.serialize()))


def engine_from_onnx(onnx_path, profiles, config, timing_cache) -> bytes:
    """Eager twin of `EngineFromOnnx`."""
    return EngineFromOnnx(onnx_path, profiles, config, timing_cache)()


def device_info() -> DeviceInfo:
    """This machine's TensorRT version, GPU name and compute capability."""
    from runtime.cuda_memory import CudaApi

    name, cc = CudaApi().device_name_and_cc(0)
    return DeviceInfo(trt().__version__, name, cc)


def build_engines(config: EngineBuildConfig) -> Path:
    """Builds every graph of the folder at `config.precision`; records them in the manifest.

    Returns:
        The manifest path.

    Raises:
        EngineError: no TensorRT, an unsupported precision, a parse or build failure.
    """
    folder = Path(config.artifacts)
    manifest = Manifest.load(folder)
    device = device_info()
    check_precision(config.precision, device.tensorrt_version)
    cache = config.timing_cache or default_timing_cache(device)
    built: dict[str, list[NamedProfile]] = {}
    for graph in config.graphs:
        if not manifest.has(graph):
            continue
        profiles = graph_profiles(manifest.data, graph, config.max_images)
        onnx_path = _onnx_for(manifest.path(graph), graph, config.precision)
        plan = engine_from_onnx(onnx_path, profiles, config, cache)
        (folder / engine_file(graph, config.precision)[1]).write_bytes(plan)
        logger.info("built %s (%s, %.1f MB)", graph, config.precision, len(plan) / 2**20)
        built[graph] = profiles
    return record_engines(folder, engine_record(device, config.precision, built))


def _onnx_for(path: Path, graph: str, precision: str) -> Path:
    """The graph to build from: the exported one, or its weight-only quantized copy."""
    bits = WEIGHT_BITS[precision]
    if bits is None or graph == "vision":  # the vision tower stays fp16: small, and accuracy-sensitive
        return path
    from export.trt_weights import weight_only_onnx

    out = path.with_name(f"{path.stem}_{precision}.onnx")
    weight_only_onnx(path, out, bits)
    return out
