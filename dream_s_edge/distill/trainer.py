"""`train_draft(config)`: distils a DREAM draft from a distillation data folder (`dream-s-edge train`).

Data flow per step and rank: sequence indices (dataset.rank_indices, a pure function of seed, step
and rank) -> `training_example` (VTC, feature noise) -> `DistillStep` (the draft's teacher-forced
pass, unrolled by `ttt_steps` for the training-time test) -> losses (KL + features + intermediate
features) -> backward (DDP averages gradients across processes) -> clip, AdamW, lr schedule.
Rank 0 logs every step, checkpoints every `save_every` steps, and measures the validation τ with the
real speculative loop every `val_every` steps and at the end; then it writes the draft with
`save_draft` and adds a "distillation" section (entropy layer choice, losses, τ) to its config.json.

What is trained is a `TrainStrategy`: `DraftStrategy` (one draft, above) or, with
`TrainConfig.supernet` set, `search.supernet_train.SupernetStrategy` (the DREAM-S supernet: phase 1
the largest network, phase 2 sandwich-sampled sub-networks; it writes `<out>/supernet`). The loop
around it (data order, DDP, optimizer and schedule, checkpoints and exact resume, log, validation
τ, progress bar) is this module's, whatever the strategy.

Launch: `dream-s-edge train ...` on one CPU or GPU; `torchrun --nproc_per_node N -m dream_s_edge.cli
train ...` on N processes (gloo on CPU, NCCL on GPUs), same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dream_s_edge.distill import train_state as ts
from dream_s_edge.distill.dataset import (
    INTERMED_SOURCES,
    DistillDataset,
    TrainingExample,
    answer_token_counts,
    rank_indices,
    training_example,
)
from dream_s_edge.distill.draft_init import build_draft, start_token_counts, start_vocabulary, warm_start
from dream_s_edge.distill.losses import LossWeights, distill_losses
from dream_s_edge.distill.prompts import PromptSpec
from dream_s_edge.distill.unroll import unrolled_forward
from dream_s_edge.distill.validate import measure_tau
from dream_s_edge.draft.checkpoint import CONFIG_FILE, save_draft
from dream_s_edge.draft.model import DraftOutput, DreamDraft
from dream_s_edge.draft.vocab_prune import save_token_counts
from dream_s_edge.generation import TreeOptions
from dream_s_edge.runners.draft_factory import target_dims
from dream_s_edge.targets import TargetAdapter, load_target
from runtime.errors import TrainingError

if TYPE_CHECKING:
    from search.supernet_train import SupernetOptions

logger = logging.getLogger(__name__)

# The target's tensors every draft holds as buffers: frozen, identical on every process, never broadcast.
SHARED_BUFFERS = ("embed_weight", "lm_head_weight", "draft_head")


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run. Changing a field makes an existing checkpoint refuse to resume."""

    data_dir: str  # folder written by `dream-s-edge distill-data`, or several joined by commas
    out_dir: str  # checkpoint, log and the final draft (<out>/draft)
    model: str = "default"  # the target the data came from: 'default' or a local HF folder
    preset: str = "dream-default"  # DraftSpec preset
    visual_keep_ratio: float | None = None  # override the preset's VTC ratio (None: keep it)
    draft_vocab_size: int | None = None  # override the preset's draft vocabulary: the N most frequent
    # answer tokens of the data (EAGLE-3's d2t), which makes the draft's LM head N / V as costly
    interaction: str | None = None  # override the preset's interaction: "cross_attention", "concat" (EAGLE:
    # fc(concat(emb, f)) at the draft's input) or "none" (None: keep the preset's)
    feature_layers: tuple[int, ...] | None = None  # override the preset's target feature layers (HF indices,
    # L = the post-norm last layer), e.g. (15, 30): a low/mid and the last layer fused (EAGLE-3's idea)
    steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # sequences per step and process
    lr: float = 5e-4  # peak; small drafts for small targets want more than the paper's 3e-5
    warmup: int = 50
    weight_decay: float = 0.0
    clip: float = 0.5  # gradient norm clip
    kl_weight: float = 1.0  # λ_KL
    feat_weight: float = 0.2  # λ_feat
    intermed_weight: float = 0.2  # λ_intermed
    intermed_source: str = "entropy"  # the early block's target: "entropy" (DREAM's entropy-selected layer)
    # or "last" (the target's last layer: the ablation without entropy selection)
    ttt_steps: int = 0  # training-time test: unrolled steps on the draft's own features (EAGLE-3)
    ttt_decay: float = 0.8  # loss weight of unrolled step k is decay**k
    feature_noise: float = 0.0  # uniform noise amplitude on the input features (EAGLE)
    save_every: int = 100  # checkpoint period, steps
    val_every: int = 0  # validation τ period, steps (0: only at the end)
    val_initial: bool = False  # also measure τ before the first step
    val_prompts: int = 4  # held-out prompts used for τ
    val_max_new_tokens: int = 32
    tree_top_k: int = 4  # the tree the validation τ is measured with
    tree_depth: int = 5
    tree_node_budget: int = 16
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    init_from: str | None = None  # a trained draft folder whose weights start the run (fresh optimizer and
    # schedule: a warm restart); its spec must be the one this config builds
    halt_after: int | None = None  # leave after this step as if killed (tests, preemptible jobs)
    supernet: SupernetOptions | None = None  # train a DREAM-S supernet instead of one draft (search/supernet_train.py)

    def __post_init__(self):
        if self.init_from is not None and self.supernet is not None:
            raise TrainingError("--init-from warm-starts one draft, not a supernet.",
                                hint="drop --init-from, or train without --supernet")
        if self.intermed_source not in INTERMED_SOURCES:
            raise TrainingError(f"Unknown intermediate-feature source {self.intermed_source!r}.",
                                hint=f"use one of {INTERMED_SOURCES}")

    def to_dict(self) -> dict:
        """The fields a resume must match (halt_after is not one of them)."""
        out = asdict(self)
        out.pop("halt_after")
        if self.supernet is None:  # ordinary runs keep the record they had before supernets existed
            out.pop("supernet")
        if self.draft_vocab_size is None:  # likewise before the vocabulary override existed
            out.pop("draft_vocab_size")
        if self.interaction is None:  # and before the interaction override
            out.pop("interaction")
        if self.feature_layers is None:  # and before the feature-layer override
            out.pop("feature_layers")
        else:
            out["feature_layers"] = list(self.feature_layers)
        if self.intermed_source == "entropy":  # and before the intermediate-target choice
            out.pop("intermed_source")
        if self.init_from is None:  # and before warm starts
            out.pop("init_from")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of `to_dict` (a checkpoint's "config")."""
        values = dict(data)
        if values.get("supernet") is not None:
            from search.supernet_train import SupernetOptions

            values["supernet"] = SupernetOptions.from_dict(values["supernet"])
        if values.get("feature_layers") is not None:
            values["feature_layers"] = tuple(values["feature_layers"])
        return cls(**values)

    @property
    def weights(self) -> LossWeights:
        return LossWeights(kl=self.kl_weight, feat=self.feat_weight, intermed=self.intermed_weight)

    @property
    def tree(self) -> TreeOptions:
        return TreeOptions(top_k=self.tree_top_k, depth=self.tree_depth, node_budget=self.tree_node_budget)


def sequence_losses(outs: list[DraftOutput], ex: TrainingExample, lm_head: torch.Tensor,
                    d2t: torch.Tensor | None, weights: LossWeights, ttt_decay: float) -> dict[str, torch.Tensor]:
    """The distillation loss of one sequence over the unrolled steps of the training-time test.

    Args:
        outs: step 0 .. k outputs over the T' stream tokens (`unrolled_forward`, or one teacher-forced pass).
        ex: the sequence.
        lm_head: [V, H_t] the target's LM head.
        d2t: [V_d] the draft vocabulary's target ids, or None.
        weights: the λs.
        ttt_decay: loss weight of unrolled step k is decay**k.

    Returns:
        {"loss" (with gradient), "kl", "feat", "intermed", "top1", "top1_k<k>"...}.
    """
    total = 0.0 * outs[0].features.sum()  # keeps the graph whole when no token counts
    metrics: dict[str, torch.Tensor] = {}
    for k, out in enumerate(outs):
        mask = ex.mask if k == 0 else ex.mask & (ex.positions - k >= ex.answer_start)
        if not bool(mask.any()):
            continue
        terms = distill_losses(out, ex.last, ex.intermed, mask, lm_head, weights, d2t)
        total = total + ttt_decay**k * terms["loss"]
        if k == 0:
            metrics.update({name: terms[name] for name in ("kl", "feat", "intermed", "top1")})
        else:
            metrics[f"top1_k{k}"] = terms["top1"]
    metrics["loss"] = total
    return metrics


class DistillStep(nn.Module):
    """The draft plus its loss: what DDP wraps, so gradient averaging hooks into `forward`."""

    def __init__(self, draft: DreamDraft, weights: LossWeights, ttt_steps: int, ttt_decay: float):
        super().__init__()
        self.draft = draft
        self.weights = weights
        self.ttt_steps = ttt_steps
        self.ttt_decay = ttt_decay

    def forward(self, ex: TrainingExample) -> dict[str, torch.Tensor]:
        """One sequence -> {"loss" (with gradient), "kl", "feat", "intermed", "top1", "top1_k<k>"...}."""
        if self.ttt_steps:
            outs = unrolled_forward(self.draft, ex.embeds, ex.features, ex.positions, self.ttt_steps)
        else:
            outs = [self.draft(ex.embeds, ex.features, ex.positions)]
        return sequence_losses(outs, ex, self.draft.lm_head_weight, self.draft.d2t, self.weights, self.ttt_decay)


class TrainStrategy:
    """What a run trains, and how a sequence becomes a loss; the trainer's loop does the rest.

    Attributes (set by subclasses):
        model: the module whose parameters are optimised, checkpointed and compared across ranks.
        module: what DDP wraps; `module(inputs)` -> {"loss" (with gradient), metric tensors...}.
        output_name: the folder the finished run writes under `--out`.
    """

    model: nn.Module
    module: nn.Module
    output_name: str

    def plan(self, step: int) -> tuple[Any, dict]:
        """(what `inputs` needs this step, fields for the step's log record); the same on every rank."""
        return None, {}

    def inputs(self, seq: dict[str, torch.Tensor], plan: Any, device: torch.device, noise: float,
               generator: torch.Generator) -> Any:
        """One stored sequence -> the argument of `module`."""
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """Called once per step after every backward, before clipping and the optimizer step."""

    def at_step(self, done: int, optimizer: torch.optim.Optimizer) -> dict | None:
        """Called when `done` steps are complete (0: before the first), before that step's checkpoint;
        returns a log record of what it changed, if anything."""
        return None

    def state(self) -> dict:
        """Strategy state a checkpoint must hold beyond the weights (restored by `load_state`)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restores `state` output."""

    def validation_drafts(self) -> list[tuple[str, DreamDraft]]:
        """(name, draft) pairs whose τ validation measures; the first is the run's main figure."""
        raise NotImplementedError

    def write(self, folder: Path, record: dict) -> Path:
        """Writes the trained result to `folder` with the run's record (rank 0 only)."""
        raise NotImplementedError


class DraftStrategy(TrainStrategy):
    """Ordinary training: one draft of the configured preset."""

    output_name = "draft"

    def __init__(self, config: TrainConfig, adapter: TargetAdapter, data: DistillDataset):
        self.config = config
        counts = answer_token_counts(data, target_dims(adapter).vocab_size)  # [V], saved with the draft
        self.draft = build_draft(adapter, config, data, counts, start_vocabulary(config.init_from))
        self.token_counts = start_token_counts(config.init_from, counts)
        if config.init_from is not None:
            warm_start(self.draft, config.init_from)
        self.model = self.draft
        self.module = DistillStep(self.draft, config.weights, config.ttt_steps, config.ttt_decay)

    def inputs(self, seq, plan, device, noise, generator) -> TrainingExample:
        return training_example(seq, self.draft.spec, device, noise, generator, self.config.intermed_source)

    def validation_drafts(self) -> list[tuple[str, DreamDraft]]:
        return [("draft", self.draft)]

    def write(self, folder: Path, record: dict) -> Path:
        save_draft(folder, self.draft, self.draft.spec, target_name=self.config.model)
        save_token_counts(folder, self.token_counts)
        path = folder / CONFIG_FILE
        saved = json.loads(path.read_text())
        saved["distillation"] = record
        path.write_text(json.dumps(saved, indent=2) + "\n")
        return folder


def make_strategy(config: TrainConfig, adapter: TargetAdapter, data: DistillDataset) -> TrainStrategy:
    """The strategy `config` asks for (a supernet when `config.supernet` is set)."""
    if config.supernet is None:
        return DraftStrategy(config, adapter, data)
    from search.supernet_train import SupernetStrategy

    return SupernetStrategy(config, adapter, data)


def train_draft(config: TrainConfig) -> Path:
    """Trains (or resumes) a draft; returns `<out>/draft` (or `<out>` when `halt_after` stopped it).

    With `config.supernet` set it trains a DREAM-S supernet and returns `<out>/supernet` (the folder
    `dream-s-edge search --supernet` reads).

    Raises:
        TrainingError: data and target disagree, a checkpoint of another configuration, a
            non-finite loss, or processes out of sync at the end.
    """
    procs = ts.setup_distributed(config.device)
    try:
        return _train(config, procs)
    finally:
        if procs.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, procs: ts.Processes) -> Path:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = DistillDataset(config.data_dir)
    adapter = _load_target(config, data.manifest, procs.device)
    strategy = make_strategy(config, adapter, data)
    wrapped = _wrap(strategy.module, procs)
    optimizer = torch.optim.AdamW(strategy.model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, ts.lr_lambda(config.warmup, config.steps))
    start = ts.load_checkpoint(out, strategy.model, optimizer, scheduler, config.to_dict(),
                               on_state=lambda state: strategy.load_state(state.get("strategy", {})))
    if procs.is_main:
        ts.trim_log(out, start)
        if 0 < start < config.steps:
            ts.append_log(out, {"step": start, "resumed": True})  # marked on the loss plot
    heldout = [PromptSpec.from_dict(p) for p in data.manifest["heldout"][: config.val_prompts]]
    if start == 0:
        _at_step(procs, strategy, optimizer, out, 0)
    if config.val_initial and start == 0:
        _validate(config, procs, adapter, strategy, heldout, out, step=0)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train", disable=not procs.is_main)
    for step in bar:
        record = _train_step(config, procs, data, wrapped, strategy, optimizer, scheduler, step)
        done = step + 1
        if procs.is_main:
            ts.append_log(out, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['kl']:.3f}", top1=f"{record['top1']:.2f}")
        _at_step(procs, strategy, optimizer, out, done)
        if done % config.save_every == 0 or done == config.steps:
            if procs.is_main:
                ts.save_checkpoint(out, strategy.model, optimizer, scheduler, done,
                                   {"config": config.to_dict(), "strategy": strategy.state()})
            ts.barrier(procs)
        if config.val_every and done % config.val_every == 0 and done != config.steps:
            _validate(config, procs, adapter, strategy, heldout, out, step=done)
        if config.halt_after == done:
            bar.close()
            return out
    bar.close()
    val = _validate(config, procs, adapter, strategy, heldout, out, step=config.steps)
    return _finish(config, procs, strategy, data, val, out)


def _at_step(procs, strategy: TrainStrategy, optimizer, out: Path, done: int) -> None:
    """Runs the strategy's step-boundary hook (every rank) and logs what it changed (rank 0)."""
    record = strategy.at_step(done, optimizer)
    if record is not None and procs.is_main:
        ts.append_log(out, record)
        logger.info("step %d: %s", done, record)


def _train_step(config, procs, data, wrapped, strategy: TrainStrategy, optimizer, scheduler, step: int) -> dict:
    """One optimizer step over `grad_accum` sequences per process; returns the step's log record."""
    generator = ts.step_generator(config.seed, step, procs.rank)
    plan, plan_log = strategy.plan(step)
    indices = rank_indices(len(data), config.seed, procs.rank, procs.world, step * config.grad_accum,
                           config.grad_accum)
    sums: dict[str, float] = {}
    for i, index in enumerate(indices):
        inputs = strategy.inputs(data[index], plan, procs.device, config.feature_noise, generator)
        last = i == len(indices) - 1
        sync = contextlib.nullcontext() if last or procs.world == 1 else wrapped.no_sync()
        with sync:
            terms = wrapped(inputs)
            (terms["loss"] / len(indices)).backward()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(indices)
    if not math.isfinite(sums["loss"]):
        raise TrainingError("The training loss is not finite.", f"step {step}, terms {sums}",
                            "lower --lr or check the data folder")
    strategy.after_backward(step)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), config.clip))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step + 1, **plan_log, **{k: round(v, 6) for k, v in sums.items()},
            "grad_norm": round(grad_norm, 5), "lr": scheduler.get_last_lr()[0]}


def _load_target(config: TrainConfig, manifest: dict, device: torch.device) -> TargetAdapter:
    """The target (eager attention, for VTC scores in validation), checked against the data."""
    if config.model == "default":
        from dream_s_edge.embedded import ensure_default_target

        path = ensure_default_target()
    else:
        path = Path(config.model)
    adapter = load_target(path, attn_implementation="eager")
    adapter.model.to(device)
    stored = manifest["target"]
    have = {"num_layers": adapter.spec.num_layers, "hidden_size": adapter.spec.hidden_size,
            "vocab_size": adapter.spec.vocab_size}
    bad = {k: (stored.get(k), v) for k, v in have.items() if stored.get(k) != v}
    if bad:
        raise TrainingError("The distillation data was built from another target.",
                            f"(data, target) values: {bad}", "pass the --model the data was built with")
    return adapter


def _wrap(module: nn.Module, procs: ts.Processes) -> nn.Module:
    """DDP over processes (gradient averaging in backward); the module itself for one process."""
    if procs.world == 1:
        return module
    # The shared target weights are frozen and identical everywhere: never broadcast them.
    shared = [name for name, _ in module.named_buffers() if name.rsplit(".", 1)[-1] in SHARED_BUFFERS]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, shared)
    device_ids = [procs.device.index] if procs.device.type == "cuda" else None
    # Unused parameters: a sub-network leaves blocks and branches out; a draft may leave a path unused.
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False,
                                   find_unused_parameters=True)


def _validate(config, procs, adapter, strategy: TrainStrategy, heldout, out: Path, step: int) -> dict | None:
    """Rank 0 measures τ of the strategy's drafts on the held-out prompts and logs it; the others wait.

    Returns:
        None off rank 0 or without held-out prompts, else {draft name: `measure_tau` result}.
    """
    vals = None
    if procs.is_main and heldout:
        vals = {}
        for name, draft in strategy.validation_drafts():
            vals[name] = measure_tau(adapter, draft, heldout, config.tree, config.val_max_new_tokens)
            draft.train()
        (_, first), *others = vals.items()
        ts.append_log(out, {"step": step, "val_tau": first["tau"], "val_accept_counts": first["accept_counts"],
                            **{f"val_tau_{name}": val["tau"] for name, val in others}})
        logger.info("step %d: validation tau %s", step, {name: round(v["tau"], 3) for name, v in vals.items()})
    ts.barrier(procs)
    return vals


def _finish(config, procs, strategy: TrainStrategy, data: DistillDataset, vals: dict | None, out: Path) -> Path:
    """Checks the processes agree, then rank 0 writes the result and its distillation record."""
    digests = ts.gather_digests(procs, ts.parameter_digest(strategy.model))
    if max(digests) - min(digests) > 1e-6 * max(1.0, abs(digests[0])):
        raise TrainingError("Training processes ended with different weights.", f"digests {digests}")
    folder = out / strategy.output_name
    if procs.is_main:
        record = {
            "layer_selection": data.manifest.get("layer_selection"),
            "data": {"folder": ",".join(str(f.resolve()) for f in data.folders), "sequences": len(data)},
            "train_config": config.to_dict(),
            "world_size": procs.world,
            "rank_digests": digests,
            "validation": next(iter(vals.values())) if vals else None,
        }
        if vals and len(vals) > 1:
            record["validation_by_draft"] = vals
        strategy.write(folder, record)
        ts.plot_log(out)
    ts.barrier(procs)
    return folder


def draft_from_checkpoint(run_dir, out_dir=None) -> Path:
    """Writes the result of a run's last checkpoint (a stopped or unfinished run).

    A draft run gives a draft folder; a supernet run (`train --supernet`) a supernet folder.

    Args:
        run_dir: the run's `--out` folder.
        out_dir: where to write (default `<run>/draft-step<N>`, or `<run>/supernet-step<N>`).

    Raises:
        TrainingError: the run has no checkpoint.
    """
    run = Path(run_dir)
    path = run / ts.CHECKPOINT_DIR / ts.STATE_FILE
    if not path.is_file():
        raise TrainingError(f"No checkpoint in {run}.", hint="train with `dream-s-edge train` first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(state["config"])
    data = DistillDataset(config.data_dir)
    adapter = _load_target(config, data.manifest, torch.device("cpu"))
    strategy = make_strategy(config, adapter, data)
    strategy.model.load_state_dict(state["model"])
    strategy.load_state(state.get("strategy", {}))
    folder = Path(out_dir) if out_dir is not None else run / f"{strategy.output_name}-step{state['step']}"
    record = {"layer_selection": data.manifest.get("layer_selection"), "step": state["step"],
              "train_config": config.to_dict(), "from_checkpoint": str(path)}
    return strategy.write(folder, record)
