"""Target-aware supernet training (`dream-s-edge train --supernet`): the trainer's supernet strategy.

Place in the data flow::

    distillation data (dream-s-edge distill-data) --the ordinary trainer's loop (dream_s_edge/distill/
    trainer.py: data order, DDP, AdamW, schedule, checkpoints, exact resume, log, validation τ)-->
    SupernetStrategy: per step, the sampled sub-networks (seeded by (seed, step)) -> SupernetStep
    (sandwich_loss) -> gradients on the supernet's shared tensors
        --> <out>/supernet (search.supernet.save_supernet, what `dream-s-edge search --supernet` reads)

Two phases (DREAM-S):

* phase 1, steps 0 .. N1 - 1: the largest network of a branch drawn per step, with the ordinary
  draft losses; with `importance="taylor"` each step adds its first-order importance of every KV
  group and FFN channel (`Supernet.accumulate_taylor`).
* the switch, when N1 steps are done: heads and channels are reordered most important first
  (`Supernet.reorder_by_importance`), the optimizer's moments permuted with them, so the smaller
  sub-networks, leading slices, keep the most important ones.
* phase 2, steps N1 .. end: the sandwich rule (largest, smallest, `random_subnets` random ones of
  one branch), each distilled from the target with the same losses, the smaller ones also from the
  largest's logits (search/sandwich.py).

Every sub-network reads the sequence through its own injection layer and visual-token keep ratio,
so the injection layers must be stored in the data (`distill-data --extra-layers`); candidates the
data lacks are dropped from the training space with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dream_s_edge.distill.dataset import (
    DistillDataset,
    TrainingExample,
    answer_token_counts,
    training_example,
)
from dream_s_edge.distill.losses import LossWeights
from dream_s_edge.distill.trainer import TrainConfig, TrainStrategy
from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.draft.spec import DraftSpec
from dream_s_edge.draft.vocab_prune import save_token_counts
from dream_s_edge.runners.draft_factory import target_dims
from dream_s_edge.targets import TargetAdapter
from runtime.errors import TrainingError
from search.sandwich import sandwich_choices, sandwich_loss
from search.supernet import SUPERNET_CONFIG, SearchSpace, SubnetChoice, Supernet, build_subnet, save_supernet

logger = logging.getLogger(__name__)

IMPORTANCE = ("taylor", "weight")


@dataclass(frozen=True)
class SupernetOptions:
    """What `train --supernet` adds to a `TrainConfig` (an empty tuple: derived, see each field).

    Attributes:
        phase1_steps: N1, steps that train only the largest network; the switch follows step N1.
        random_subnets: random sub-networks per phase-2 step, after the largest and the smallest.
        kd_weight: λ_kd of the smaller sub-networks' KL to the largest's logits.
        importance: head / channel ranking at the switch, "taylor" (first-order, summed over phase
            1) or "weight" (weight norms).
        interactions: branches ("cross_attention", "concat").
        num_layers: decoder block counts; the largest is the supernet's depth (): 1 .. the preset's.
        head_ratios: head keep ratios, whole KV groups each; (): k / Hkv for k = 1 .. Hkv.
        ffn_ratios: FFN width fractions.
        injection_layers: candidate injection layers are the target's last N hidden states (those
            the data stores).
        visual_keep_ratios: visual-token keep ratios; (): the preset's (or --visual-keep-ratio) and 1.0.
        draft_vocab_sizes: draft vocabulary sizes (None = full); reduced ones keep the data's most
            frequent answer tokens.
    """

    phase1_steps: int = 200
    random_subnets: int = 1
    kd_weight: float = 1.0
    importance: str = "taylor"
    interactions: tuple[str, ...] = ("cross_attention",)
    num_layers: tuple[int, ...] = ()
    head_ratios: tuple[float, ...] = ()
    ffn_ratios: tuple[float, ...] = (0.5, 1.0)
    injection_layers: int = 5
    visual_keep_ratios: tuple[float, ...] = ()
    draft_vocab_sizes: tuple[int | None, ...] = (None,)

    def __post_init__(self):
        if self.phase1_steps < 0 or self.random_subnets < 0 or self.kd_weight < 0 or self.injection_layers < 1:
            raise TrainingError("Supernet options out of range.",
                                f"phase1_steps={self.phase1_steps}, random_subnets={self.random_subnets}, "
                                f"kd_weight={self.kd_weight}, injection_layers={self.injection_layers}",
                                "use phase1_steps, random_subnets, kd_weight >= 0 and injection_layers >= 1")
        if self.importance not in IMPORTANCE:
            raise TrainingError(f"Unknown importance score {self.importance!r}.", hint=f"use one of {IMPORTANCE}")

    @classmethod
    def from_dict(cls, data: dict) -> SupernetOptions:
        """Inverse of `dataclasses.asdict` (lists from JSON become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def base_spec(adapter: TargetAdapter, config: TrainConfig) -> DraftSpec:
    """The largest architecture: the preset, as deep as the deepest requested sub-network."""
    overrides = {} if config.visual_keep_ratio is None else {"visual_keep_ratio": config.visual_keep_ratio}
    if config.supernet.num_layers:
        overrides["num_layers"] = max(config.supernet.num_layers)
    return DraftSpec.from_name(config.preset, target_dims(adapter), **overrides)


def stored_layers(manifest: dict, num_layers: int) -> set[int]:
    """Target hidden states a distillation data folder holds in full (the last and the extra layers)."""
    return {num_layers, *manifest.get("config", {}).get("extra_layers", [])}


def training_space(spec: DraftSpec, options: SupernetOptions, stored: set[int]) -> SearchSpace:
    """The search space the supernet is trained over (derived defaults filled in).

    Raises:
        TrainingError: no candidate injection layer is stored in the data.
    """
    L = spec.target_num_layers
    candidates = SearchSpace.for_target(L, options.injection_layers).feature_layers
    layers = tuple(i for i in candidates if i in stored)
    if not layers:
        raise TrainingError("The distillation data stores none of the candidate injection layers.",
                            f"candidates {candidates}, stored {sorted(stored)}",
                            "rebuild the data with `distill-data --extra-layers ...`")
    if len(layers) < len(candidates):
        logger.warning("injection layers %s are not in the data; training over %s only (distill-data "
                       "--extra-layers adds them)", sorted(set(candidates) - set(layers)), layers)
    keep = options.visual_keep_ratios or tuple(sorted({spec.visual_keep_ratio, 1.0}))
    return SearchSpace(
        interactions=options.interactions,
        num_layers=options.num_layers or tuple(range(1, spec.num_layers + 1)),
        head_ratios=options.head_ratios or tuple(k / spec.num_kv_heads for k in range(1, spec.num_kv_heads + 1)),
        ffn_ratios=options.ffn_ratios, feature_layers=layers, visual_keep_ratios=keep,
        draft_vocab_sizes=options.draft_vocab_sizes)


def describe(choice: SubnetChoice) -> str:
    """A short name of a sub-network for the log, e.g. "cross_attention L2 h0.5 f1.0 @2 v1.0 Vfull"."""
    vocab = "full" if choice.draft_vocab_size is None else choice.draft_vocab_size
    return (f"{choice.interaction} L{choice.num_layers} h{choice.head_ratio:g} f{choice.ffn_ratio:g} "
            f"@{choice.feature_layer} v{choice.visual_keep_ratio:g} V{vocab}")


class SupernetStep(nn.Module):
    """The supernet plus the sandwich loss: what DDP wraps, so gradient averaging hooks into `forward`."""

    def __init__(self, net: Supernet, weights: LossWeights, ttt_steps: int, ttt_decay: float, kd_weight: float):
        super().__init__()
        self.net = net
        self.weights = weights
        self.ttt_steps = ttt_steps
        self.ttt_decay = ttt_decay
        self.kd_weight = kd_weight

    def forward(self, batch: list[tuple[SubnetChoice, TrainingExample]]) -> dict[str, torch.Tensor]:
        """One sequence as each sub-network reads it -> {"loss" (summed, with gradient), metrics...}.

        The first sub-network's metrics keep their names ("kl", "top1", ...); the others' get its
        role as a suffix: "_smallest", "_random1", ...
        """
        loss, per_choice = sandwich_loss(self.net, batch, self.weights, self.kd_weight, self.ttt_steps,
                                         self.ttt_decay)
        out = {"loss": loss}
        for i, metrics in enumerate(per_choice):
            suffix = "" if i == 0 else "_smallest" if i == 1 else f"_random{i - 1}"
            out.update({f"{name}{suffix}": value for name, value in metrics.items() if not (i == 0 and name == "loss")})
            if i == 0:
                out["loss_largest"] = metrics["loss"]
        return out


class SupernetStrategy(TrainStrategy):
    """Trains a DREAM-S supernet in the ordinary trainer's loop (see the module docstring).

    Raises:
        TrainingError: options out of range, or no candidate injection layer in the data.
        DraftSpecError: a sub-network of the space does not fit the supernet (e.g. a head ratio
            that does not keep whole KV groups).
    """

    output_name = "supernet"

    def __init__(self, config: TrainConfig, adapter: TargetAdapter, data: DistillDataset):
        self.config = config
        self.options = options = config.supernet
        spec = base_spec(adapter, config)
        self.space = training_space(spec, options, stored_layers(data.manifest, spec.target_num_layers))
        if config.ttt_steps and "concat" in self.space.interactions:
            raise TrainingError("Training-time test is not implemented for the 'concat' branch.",
                                hint="train with --ttt-steps 0, or without the concat interaction")
        self.token_counts = answer_token_counts(data, spec.target_vocab_size)  # [V], saved with the supernet
        counts = self.token_counts if any(size is not None for size in self.space.draft_vocab_sizes) else None
        torch.manual_seed(config.seed)
        self.net = Supernet(spec, adapter.text_embedding().weight.float(), adapter.lm_head_weight().float(),
                            self.space.interactions, counts).to(adapter.device)
        for choice in self.space.choices():  # refuse a space that does not fit before training starts
            self.net.subnet_spec(choice)
        self.model = self.net
        self.module = SupernetStep(self.net, config.weights, config.ttt_steps, config.ttt_decay, options.kd_weight)

    def phase(self, step: int) -> int:
        """1 while training the largest network only, then 2 (the sandwich rule)."""
        return 1 if step < self.options.phase1_steps else 2

    def plan(self, step: int) -> tuple[list[SubnetChoice], dict]:
        """The step's sub-networks: a pure function of (seed, step), the same on every rank."""
        rng = np.random.default_rng([self.config.seed, step])
        if self.phase(step) == 1:
            choices = sandwich_choices(self.space, rng, random=0)[:1]
        else:
            choices = sandwich_choices(self.space, rng, random=self.options.random_subnets)
        return choices, {"phase": self.phase(step), "subnets": [describe(c) for c in choices]}

    def inputs(self, seq, plan: list[SubnetChoice], device, noise, generator) -> list[tuple[SubnetChoice, TrainingExample]]:
        return [(c, training_example(seq, self.net.subnet_spec(c), device, noise, generator)) for c in plan]

    def after_backward(self, step: int) -> None:
        if self.phase(step) == 1 and self.options.importance == "taylor":
            self.net.accumulate_taylor()

    def at_step(self, done: int, optimizer: torch.optim.Optimizer) -> dict | None:
        """The phase switch, once N1 steps are done (before their checkpoint, so a resume never redoes it)."""
        if done != self.options.phase1_steps or done >= self.config.steps:
            return None
        self.net.reorder_by_importance(self.options.importance, optimizer)
        return {"step": done, "phase_switch": self.options.importance}

    def state(self) -> dict:
        return {"taylor": self.net.importance_state()}

    def load_state(self, state: dict) -> None:
        self.net.load_importance_state(state.get("taylor", {}))

    def validation_drafts(self) -> list[tuple[str, DreamDraft]]:
        """The largest and the smallest sub-network (of the first branch), extracted."""
        return [("largest", build_subnet(self.net, self.space.largest())),
                ("smallest", build_subnet(self.net, self.space.smallest()))]

    def write(self, folder: Path, record: dict) -> Path:
        """`save_supernet`, plus the run's record and its training space under "training" in supernet.json."""
        save_supernet(self.net, folder)
        save_token_counts(folder, self.token_counts)  # `search` copies it beside the chosen draft
        path = Path(folder) / SUPERNET_CONFIG
        saved = json.loads(path.read_text())
        saved["training"] = {**record, "space": dataclasses.asdict(self.space)}
        path.write_text(json.dumps(saved, indent=1) + "\n")
        return Path(folder)


def trained_space(folder) -> SearchSpace | None:
    """The space a supernet folder was trained over (None for a supernet saved without training)."""
    config = json.loads((Path(folder) / SUPERNET_CONFIG).read_text())
    space = config.get("training", {}).get("space")
    return None if space is None else SearchSpace(**{k: tuple(v) for k, v in space.items()})

