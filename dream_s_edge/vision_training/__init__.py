"""Vision-side training and evaluation of the embedded default target (and any Idefics3 target).

`train_vision(VisionTrainConfig)` trains the vision tower and connector with the language model frozen
and writes the shipped `dream_s_edge/assets/default_vision.safetensors`; `evaluate_target(EvalConfig)`
scores exact-match accuracy per question type on the test split against the untrained tower.

The configs import without torch (the CLI builds its flags from them); the trainer and evaluator
are loaded on first use.
"""

from dream_s_edge.vision_training.config import PRESETS, EvalConfig, VisionTrainConfig

__all__ = ["PRESETS", "EvalConfig", "VisionTrainConfig", "evaluate_target", "train_vision"]


def __getattr__(name: str):
    if name == "train_vision":
        from dream_s_edge.vision_training.trainer import train_vision

        return train_vision
    if name == "evaluate_target":
        from dream_s_edge.vision_training.evaluate import evaluate_target

        return evaluate_target
    raise AttributeError(name)
