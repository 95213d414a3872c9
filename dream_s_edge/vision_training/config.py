"""Configs of vision-tower training and of target evaluation, with named presets.

`VisionTrainConfig` drives `train_vision` (`dream-s-edge target train-vision`); `EvalConfig` drives
`evaluate_target` (`dream-s-edge target eval`). Both are frozen: a run is described by one value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PROJECTIONS = "qkvo"  # the attention projections LoRA can wrap: self_attn.{q,k,v,o}_proj


def projection_suffixes(projections: str) -> tuple[str, ...]:
    """Module-name suffixes of the attention projections named by letters of PROJECTIONS."""
    if not projections or set(projections) - set(PROJECTIONS):
        raise ValueError(f"LoRA projections {projections!r}: use letters of {PROJECTIONS!r}, e.g. 'qv'")
    return tuple(f"self_attn.{p}_proj" for p in projections)


@dataclass(frozen=True)
class VisionTrainConfig:
    """One vision-training run. Steps [0, probe_steps) train the tower with a cheap slot head and
    no language model (stage 1); steps [probe_steps, total_steps) train it through the frozen language
    model with the loss on answer tokens (stage 2)."""

    out_dir: str = "runs/train-vision"  # checkpoint.pt, log and trained tensors go here
    model_dir: str | None = None  # an Idefics3 model folder; None = the embedded default target
    asset_path: str | None = None  # where the trained tensors go; None = the package asset for the
    # default target (and its MODEL_CARD.md), else out_dir/vision.safetensors
    seed: int = 0  # data order: sample indices are a function of (seed, step) only
    init_seed: int | None = None  # seeds the untrained tower; None = the embedded target's own seed
    probe_steps: int = 2400  # stage 1 steps (vision tower + lexical heads, no language model)
    probe_batch: int = 32
    probe_lr: float = 1e-3
    lm_steps: int = 320  # stage 2 steps (through the language model, frozen but for LoRA)
    batch_size: int = 8  # images per stage 2 step
    questions_per_image: int = 3  # stage 2 packs this many QA turns per image (one forward)
    lr: float = 3e-4  # stage 2 peak learning rate
    caption_prob: float = 0.5  # share of stage 2 images that also get a caption turn (dense supervision),
    # first of the turns for half of them (open questions come first at inference), else at a seeded place
    position_turns: int = 2  # stages 2 and 3 add up to this many "Where is the ...?" turns about the
    # image's other objects: position is the one type that needs reading, not seeing
    slot_weight: float = 1.0  # stages 2 and 3 keep the stage-1 slot loss at this weight, so the visual
    # tokens stay word embeddings (without it they drift: 30x the embeddings' scale after 250 steps)
    lora_rank: int = 8  # LoRA rank on the language model's attention projections; 0 = frozen LM
    lora_projections: str = "qkvo"  # which projections get adapters (letters of q, k, v, o). With q/v
    # only, position answers stayed at 0.60-0.65: the model must copy the place label 8 tokens after
    # the object's words, and it copied a neighbouring cell's
    lora_alpha: float = 16.0
    lora_lr_scale: float = 1.0  # the adapters' learning rate relative to `lr`
    tower_lr_scale: float = 0.0  # the vision tower's learning rate in stages 2 and 3 relative to `lr`;
    # 0 = frozen there (the connector and adapters still train). Trained through the language model,
    # the tower lost object accuracy (slot colour 0.76 -> 0.67) even with the slot loss kept
    polish_steps: int = 260  # stage 3 steps: like stage 2, but every answerable question of an image
    # (up to 5 turns), at `polish_lr`; these steps come last, so a finished run can be extended by
    # them and resume exactly as a fresh run of the longer schedule would
    polish_lr: float = 1e-4  # stage 3 peak learning rate (the adapters' is scaled by lora_lr_scale)
    polish_caption_prob: float = 0.5  # share of stage 3 images that also get a caption turn; without
    # it, stage 3 taught the model to answer open questions ("What is in this image?") in one word;
    # and with the caption always the last turn, first-turn open questions still got one word
    warmup: int = 20  # linear warm-up steps at the start of each stage
    val_size: int = 40  # held-out questions scored during training
    eval_every: int = 50  # steps between validation scores
    checkpoint_every: int = 25  # steps between checkpoints (a kill loses at most this many)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None = torch's default
    stop_after: int | None = None  # stop (as if killed) after this global step; for time-boxed runs
    resume: bool = True  # continue from out_dir/checkpoint.pt when it exists

    def __post_init__(self):
        if min(self.probe_steps, self.lm_steps, self.polish_steps) < 0 or self.total_steps == 0:
            raise ValueError("probe_steps, lm_steps and polish_steps must be >= 0 and not all 0")
        if self.questions_per_image < 1 or self.batch_size < 1 or self.probe_batch < 1:
            raise ValueError("batch sizes and questions_per_image must be >= 1")
        if self.position_turns < 0:
            raise ValueError("position_turns must be >= 0")
        if self.lora_rank:
            projection_suffixes(self.lora_projections)

    @property
    def total_steps(self) -> int:
        return self.probe_steps + self.lm_steps + self.polish_steps

    def stage_of(self, step: int) -> int:
        """The stage (1, 2 or 3) that global `step` belongs to."""
        return 1 if step < self.probe_steps else 2 if step < self.probe_steps + self.lm_steps else 3

    def stage_start(self, stage: int) -> int:
        """The first global step of `stage`."""
        return (0, 0, self.probe_steps, self.probe_steps + self.lm_steps)[stage]

    @classmethod
    def from_name(cls, name: str, **overrides) -> VisionTrainConfig:
        """A named preset (see PRESETS), with field overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, VisionTrainConfig] = {
    # The shipped weights. Measured on 2 idle CPU cores: stage 1 ~0.8 s/step, stage 2 ~5 s/step, stage 3
    # ~6.2 s/step, so 2400 * 0.8 + 320 * 5 + 260 * 6.2 + validation ~= 87 min: inside 2 hours.
    "default": VisionTrainConfig(),
    # A few minutes: shows that both stages lower their loss.
    "smoke": VisionTrainConfig(
        out_dir="runs/train-vision-smoke",
        probe_steps=24,
        lm_steps=10,
        polish_steps=4,
        val_size=8,
        eval_every=5,
        checkpoint_every=10,
        asset_path="runs/train-vision-smoke/vision.safetensors",
    ),  # fmt: skip
}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation of a target's vision: exact match per question type on the test split."""

    out_dir: str = "runs/eval-vision"  # eval.json and eval.png go here
    model_dir: str | None = None  # an Idefics3 model folder; None = the embedded default target
    weights: str | None = None  # trained vision tensors; None = the package asset
    init_seed: int | None = None  # seeds the untrained baseline tower; None = the target's own seed
    per_type: int = 40  # test questions per question type
    batch_size: int = 8
    max_new_tokens: int = 5
    swap_pairs: int = 20  # image-swap pairs: does the answer follow the image?
    photos: bool = True  # also answer questions on scikit-image photos (fluency only, no accuracy)
    device: str = "auto"
    threads: int | None = None
