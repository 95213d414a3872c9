"""Procedural scene-QA data: seeded scenes of shapes, colours and words, rendered with PIL, with
short-answer questions (colour, count, shape, position, word), captions and descriptions.

Training (`dream_s_edge.vision_training`) reads train samples by index; evaluation reads the test split.
"""

from dream_s_edge.data.dataset import SPLIT_OFFSETS, SceneSample, eval_sample, make_sample, sample_seed
from dream_s_edge.data.questions import QA, QUESTION_TYPES, caption, describe
from dream_s_edge.data.scenes import Scene, SceneObject, render_scene, sample_scene

__all__ = [
    "QA",
    "QUESTION_TYPES",
    "SPLIT_OFFSETS",
    "Scene",
    "SceneObject",
    "SceneSample",
    "caption",
    "describe",
    "eval_sample",
    "make_sample",
    "render_scene",
    "sample_scene",
    "sample_seed",
]
