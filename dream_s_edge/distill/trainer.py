"""`train_draft(config)`: distils a DREAM draft from a distillation data folder (`dream-s-edge train`).

Data flow per step and rank: sequence indices (dataset.rank_indices, a pure function of seed, step
and rank) -> `training_example` (VTC, feature noise) -> `DistillStep` (the draft's teacher-forced
pass, unrolled by `ttt_steps` for the training-time test) -> losses (KL + features + intermediate
features) -> backward (DDP averages gradients across processes) -> clip, AdamW, lr schedule.
Rank 0 logs every step, checkpoints every `save_every` steps, and measures the validation τ with the
real speculative loop every `val_every` steps and at the end; then it writes the draft with
`save_draft` and adds a "distillation" section (entropy layer choice, losses, τ) to its config.json.

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

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dream_s_edge.distill import train_state as ts
from dream_s_edge.distill.dataset import DistillDataset, TrainingExample, rank_indices, training_example
from dream_s_edge.distill.losses import LossWeights, distill_losses
from dream_s_edge.distill.prompts import PromptSpec
from dream_s_edge.distill.unroll import unrolled_forward
from dream_s_edge.distill.validate import measure_tau
from dream_s_edge.draft.checkpoint import CONFIG_FILE, save_draft
from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.draft.spec import DraftSpec
from dream_s_edge.generation import TreeOptions
from dream_s_edge.runners.draft_factory import target_dims
from dream_s_edge.targets import TargetAdapter, load_target
from runtime.errors import TrainingError

logger = logging.getLogger(__name__)

FROZEN_BUFFERS = ("draft.embed_weight", "draft.lm_head_weight", "draft.draft_head")


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run. Changing a field makes an existing checkpoint refuse to resume."""

    data_dir: str  # folder written by `dream-s-edge distill-data`
    out_dir: str  # checkpoint, log and the final draft (<out>/draft)
    model: str = "default"  # the target the data came from: 'default' or a local HF folder
    preset: str = "dream-default"  # DraftSpec preset
    visual_keep_ratio: float | None = None  # override the preset's VTC ratio (None: keep it)
    steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # sequences per step and process
    lr: float = 5e-4  # peak; small drafts for small targets want more than the paper's 3e-5
    warmup: int = 50
    weight_decay: float = 0.0
    clip: float = 0.5  # gradient norm clip
    kl_weight: float = 1.0  # λ_KL
    feat_weight: float = 0.2  # λ_feat
    intermed_weight: float = 0.2  # λ_intermed
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
    halt_after: int | None = None  # leave after this step as if killed (tests, preemptible jobs)

    def to_dict(self) -> dict:
        """The fields a resume must match (halt_after is not one of them)."""
        out = asdict(self)
        out.pop("halt_after")
        return out

    @property
    def weights(self) -> LossWeights:
        return LossWeights(kl=self.kl_weight, feat=self.feat_weight, intermed=self.intermed_weight)

    @property
    def tree(self) -> TreeOptions:
        return TreeOptions(top_k=self.tree_top_k, depth=self.tree_depth, node_budget=self.tree_node_budget)


class DistillStep(nn.Module):
    """The draft plus its loss: what DDP wraps, so gradient averaging hooks into `forward`."""

    def __init__(self, draft: DreamDraft, weights: LossWeights, ttt_steps: int, ttt_decay: float):
        super().__init__()
        self.draft = draft
        self.weights = weights
        self.ttt_steps = ttt_steps
        self.ttt_decay = ttt_decay

    def forward(self, ex: TrainingExample) -> dict[str, torch.Tensor]:
        """One sequence -> {"loss" (with gradient), "kl", "feat", "intermed", "top1", "kl_k<k>"...}."""
        if self.ttt_steps:
            outs = unrolled_forward(self.draft, ex.embeds, ex.features, ex.positions, self.ttt_steps)
        else:
            outs = [self.draft(ex.embeds, ex.features, ex.positions)]
        total = 0.0 * outs[0].features.sum()  # keeps the graph whole when no token counts
        metrics: dict[str, torch.Tensor] = {}
        for k, out in enumerate(outs):
            mask = ex.mask if k == 0 else ex.mask & (ex.positions - k >= ex.answer_start)
            if not bool(mask.any()):
                continue
            terms = distill_losses(out, ex.last, ex.intermed, mask, self.draft.lm_head_weight, self.weights,
                                   self.draft.d2t)
            total = total + self.ttt_decay**k * terms["loss"]
            if k == 0:
                metrics.update({name: terms[name] for name in ("kl", "feat", "intermed", "top1")})
            else:
                metrics[f"top1_k{k}"] = terms["top1"]
        metrics["loss"] = total
        return metrics


def train_draft(config: TrainConfig) -> Path:
    """Trains (or resumes) a draft; returns `<out>/draft` (or `<out>` when `halt_after` stopped it).

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
    draft = build_draft(adapter, config)
    module = DistillStep(draft, config.weights, config.ttt_steps, config.ttt_decay)
    wrapped = _wrap(module, procs)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, ts.lr_lambda(config.warmup, config.steps))
    start = ts.load_checkpoint(out, draft, optimizer, scheduler, config.to_dict())
    if procs.is_main:
        ts.trim_log(out, start)
    heldout = [PromptSpec.from_dict(p) for p in data.manifest["heldout"][: config.val_prompts]]
    if config.val_initial and start == 0:
        _validate(config, procs, adapter, draft, heldout, out, step=0)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train", disable=not procs.is_main)
    for step in bar:
        record = _train_step(config, procs, data, wrapped, draft, optimizer, scheduler, step)
        done = step + 1
        if procs.is_main:
            ts.append_log(out, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['kl']:.3f}", top1=f"{record['top1']:.2f}")
        if done % config.save_every == 0 or done == config.steps:
            if procs.is_main:
                ts.save_checkpoint(out, draft, optimizer, scheduler, done, {"config": config.to_dict()})
            ts.barrier(procs)
        if config.val_every and done % config.val_every == 0 and done != config.steps:
            _validate(config, procs, adapter, draft, heldout, out, step=done)
        if config.halt_after == done:
            bar.close()
            return out
    bar.close()
    val = _validate(config, procs, adapter, draft, heldout, out, step=config.steps)
    return _finish(config, procs, draft, data.manifest, val, out)


def _train_step(config, procs, data, wrapped, draft, optimizer, scheduler, step: int) -> dict:
    """One optimizer step over `grad_accum` sequences per process; returns the step's log record."""
    generator = ts.step_generator(config.seed, step, procs.rank)
    indices = rank_indices(len(data), config.seed, procs.rank, procs.world, step * config.grad_accum,
                           config.grad_accum)
    sums: dict[str, float] = {}
    for i, index in enumerate(indices):
        ex = training_example(data[index], draft.spec, procs.device, config.feature_noise, generator)
        last = i == len(indices) - 1
        sync = contextlib.nullcontext() if last or procs.world == 1 else wrapped.no_sync()
        with sync:
            terms = wrapped(ex)
            (terms["loss"] / len(indices)).backward()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(indices)
    if not math.isfinite(sums["loss"]):
        raise TrainingError("The training loss is not finite.", f"step {step}, terms {sums}",
                            "lower --lr or check the data folder")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(draft.parameters(), config.clip))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step + 1, **{k: round(v, 6) for k, v in sums.items()}, "grad_norm": round(grad_norm, 5),
            "lr": scheduler.get_last_lr()[0]}


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


def build_draft(adapter: TargetAdapter, config: TrainConfig) -> DreamDraft:
    """A fresh draft of the configured preset, identical on every process (seeded)."""
    overrides = {} if config.visual_keep_ratio is None else {"visual_keep_ratio": config.visual_keep_ratio}
    spec = DraftSpec.from_name(config.preset, target_dims(adapter), **overrides)
    torch.manual_seed(config.seed)
    draft = DreamDraft(spec, adapter.text_embedding().weight.float(), adapter.lm_head_weight().float())
    return draft.to(adapter.device)


def _wrap(module: DistillStep, procs: ts.Processes) -> nn.Module:
    """DDP over processes (gradient averaging in backward); the module itself for one process."""
    if procs.world == 1:
        return module
    # The shared target weights are frozen and identical everywhere: never broadcast them.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(FROZEN_BUFFERS))
    device_ids = [procs.device.index] if procs.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False,
                                   find_unused_parameters=True)


def _validate(config, procs, adapter, draft, heldout, out: Path, step: int) -> dict | None:
    """Rank 0 measures τ on the held-out prompts and logs it; the others wait."""
    val = None
    if procs.is_main and heldout:
        val = measure_tau(adapter, draft, heldout, config.tree, config.val_max_new_tokens)
        draft.train()
        ts.append_log(out, {"step": step, "val_tau": val["tau"], "val_accept_counts": val["accept_counts"]})
        logger.info("step %d: validation tau %.3f", step, val["tau"])
    ts.barrier(procs)
    return val


def _finish(config, procs, draft: DreamDraft, manifest: dict, val: dict | None, out: Path) -> Path:
    """Checks the processes agree, then rank 0 writes the draft and its distillation record."""
    digests = ts.gather_digests(procs, ts.parameter_digest(draft))
    if max(digests) - min(digests) > 1e-6 * max(1.0, abs(digests[0])):
        raise TrainingError("Training processes ended with different weights.", f"digests {digests}")
    folder = out / "draft"
    if procs.is_main:
        save_draft(folder, draft, draft.spec, target_name=config.model)
        path = folder / CONFIG_FILE
        record = json.loads(path.read_text())
        record["distillation"] = {
            "layer_selection": manifest.get("layer_selection"),
            "data": {"folder": str(Path(config.data_dir).resolve()), "sequences": len(DistillDataset(config.data_dir))},
            "train_config": config.to_dict(),
            "world_size": procs.world,
            "rank_digests": digests,
            "validation": val,
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        ts.plot_log(out)
    ts.barrier(procs)
    return folder


def draft_from_checkpoint(run_dir, out_dir=None) -> Path:
    """Writes the draft of a run's last checkpoint as a draft folder (a stopped or unfinished run).

    Args:
        run_dir: the run's `--out` folder.
        out_dir: where to write (default `<run>/draft-step<N>`).

    Raises:
        TrainingError: the run has no checkpoint.
    """
    run = Path(run_dir)
    path = run / ts.CHECKPOINT_DIR / ts.STATE_FILE
    if not path.is_file():
        raise TrainingError(f"No checkpoint in {run}.", hint="train with `dream-s-edge train` first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig(**state["config"])
    data = DistillDataset(config.data_dir)
    adapter = _load_target(config, data.manifest, torch.device("cpu"))
    draft = build_draft(adapter, config)
    draft.load_state_dict(state["model"])
    folder = Path(out_dir) if out_dir is not None else run / f"draft-step{state['step']}"
    save_draft(folder, draft, draft.spec, target_name=config.model)
    record = json.loads((folder / CONFIG_FILE).read_text())
    record["distillation"] = {"layer_selection": data.manifest.get("layer_selection"), "step": state["step"],
                              "train_config": config.to_dict(), "from_checkpoint": str(path)}
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder
