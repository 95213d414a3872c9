"""Target VLMs behind one interface: adapters over the HF classes, a static KV cache, tree masks.

from dream_s_edge.targets import load_target
target = load_target("path/to/model")          # family from config.json
inputs = target.build_inputs(image, "What is in the picture?")
"""

from dream_s_edge.targets.base import StepOutput, TargetAdapter, TargetSpec
from dream_s_edge.targets.kv_cache import StaticKVCache
from dream_s_edge.targets.registry import ADAPTERS, SUPPORTED_FAMILIES, adapter_for, load_target

__all__ = [
    "ADAPTERS",
    "SUPPORTED_FAMILIES",
    "StaticKVCache",
    "StepOutput",
    "TargetAdapter",
    "TargetSpec",
    "adapter_for",
    "load_target",
]
