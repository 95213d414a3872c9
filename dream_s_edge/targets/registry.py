"""Which adapter serves a model folder: the family is read from config.json, never from the name.

`load_target(path)` reads `model_type` (and, for LLaVA, the vision tower's `model_type`, which tells
Pixtral apart), picks the family's adapter and loads the folder. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dream_s_edge.targets.base import TargetAdapter
from dream_s_edge.targets.gemma3 import Gemma3Adapter
from dream_s_edge.targets.idefics3 import Idefics3Adapter
from dream_s_edge.targets.llava import LlavaAdapter
from dream_s_edge.targets.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from runtime.errors import ModelLoadError

# HF config `model_type` -> adapter class.
ADAPTERS: dict[str, type[TargetAdapter]] = {
    "idefics3": Idefics3Adapter,
    "llava": LlavaAdapter,
    "gemma3": Gemma3Adapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
}

# Architectures named in config.json -> model_type, for configs that omit model_type.
_ARCHITECTURES = {adapter.model_class: model_type for model_type, adapter in ADAPTERS.items()}

SUPPORTED_FAMILIES = ("smolvlm", "llava", "pixtral", "gemma3", "qwen2_vl", "qwen2_5_vl")

_SUPPORTED_NOTE = (
    "supported: SmolVLM/Idefics3 (idefics3), LLaVA-1.5 and Pixtral (llava), Gemma3 (gemma3), "
    "Qwen2-VL (qwen2_vl), Qwen2.5-VL (qwen2_5_vl)"
)


def load_target(
    path_or_name: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> TargetAdapter:
    """Loads a local HF VLM folder behind the adapter of its family.

    Args:
        path_or_name: a local model folder holding config.json, weights and processor files.
        dtype: the weights' dtype once loaded.
        attn_implementation: "sdpa" for speed, "eager" when attention entropy or visual
            attention is needed.

    Raises:
        ModelLoadError: the folder is missing, has no config.json, or holds an unsupported family.
    """
    return adapter_for(path_or_name).from_pretrained(Path(path_or_name), dtype, attn_implementation)


def adapter_for(path_or_name: str | Path) -> type[TargetAdapter]:
    """The adapter class of a model folder, from its config.json."""
    path = Path(path_or_name)
    config_file = path / "config.json"
    if not config_file.is_file():
        what = "is not a folder" if not path.is_dir() else "has no config.json"
        raise ModelLoadError(
            f"Target model {path} {what}.",
            note=_SUPPORTED_NOTE,
            hint="pass a local HF model folder (nothing is downloaded)",
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{config_file} is not valid JSON.", note=str(error)) from error
    return _adapter_of_config(config, path)


def _adapter_of_config(config: dict, path: Path) -> type[TargetAdapter]:
    model_type = config.get("model_type")
    if model_type not in ADAPTERS:
        model_type = next(
            (_ARCHITECTURES[a] for a in config.get("architectures") or [] if a in _ARCHITECTURES), None
        )
    if model_type is None:
        raise ModelLoadError(
            f"Unsupported target family in {path}.",
            note=f"model_type={config.get('model_type')!r}, architectures={config.get('architectures')}; "
            + _SUPPORTED_NOTE,
            hint="convert the model to one of the supported HF classes, or add an adapter in dream_s_edge/targets/",
        )
    return ADAPTERS[model_type]
