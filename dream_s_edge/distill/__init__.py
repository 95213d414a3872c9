"""DREAM distillation: self-distillation data, entropy-adaptive layer choice, losses and the trainer.

`prompts.py` (prompt sources) -> `data.py` (`build_distill_data`: the target's answers and tensors,
sharded safetensors + manifest) -> `layers.py` (entropy profile and layer choice) -> `dataset.py`
(reading, VTC) -> `losses.py` + `unroll.py` (training-time test) -> `trainer.py` (`train_draft`,
checkpoints, DDP; `train_state.py`) -> `validate.py` (τ with the real speculative loop).
"""

from dream_s_edge.distill.data import DistillDataConfig, build_distill_data, read_manifest
from dream_s_edge.distill.layers import LayerSelection, entropy_band, per_token_layers, select_layer
from dream_s_edge.distill.losses import LossWeights, distill_losses, kl_per_token
from dream_s_edge.distill.trainer import TrainConfig, draft_from_checkpoint, train_draft

__all__ = [
    "DistillDataConfig",
    "LayerSelection",
    "LossWeights",
    "TrainConfig",
    "build_distill_data",
    "distill_losses",
    "draft_from_checkpoint",
    "entropy_band",
    "kl_per_token",
    "per_token_layers",
    "read_manifest",
    "select_layer",
    "train_draft",
]
