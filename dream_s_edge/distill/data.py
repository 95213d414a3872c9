"""Self-distillation data: the target's own answers and the target tensors the draft learns from.

`build_distill_data(config)` runs every prompt (distill/prompts.py) through the target: greedy (and
optionally sampled) answers with the repo's own decoding loop, then one teacher-forced pass over
prompt + answer with eager attention, which yields per sequence (T tokens, H target width, L layers):

    input_ids       [T] int32       prompt + answer ids
    embeds          [T, H] fp16     the target's layer-0 input (image embeddings spliced in)
    last            [T, H] fp16     last-layer post-norm hidden state (the draft's feature / target)
    intermed        [T, H] fp16     hidden state of each token's lowest-entropy band layer (DREAM)
    intermed_layer  [T] uint8       that layer
    layer_<i>       [T, H] fp16     extra fixed layers (config.extra_layers), for other drafts
    entropy         [L, T] fp16     attention entropy per layer and query
    visual_scores   [T] fp32        attention received in the last layer at prefill (VTC scores)
    visual_mask     [T] bool        image-token positions
    loss_mask       [T] bool        positions whose next token is an answer token

Layout on disk: `shard-00000.safetensors` ... (keys `<sequence id>.<name>`), `manifest.json`
(config, target, shards, the entropy profile and layer choice, prompts), `heldout.jsonl` + `images/`
(held-out prompts in the bench format). Resumable: finished shards are listed in the manifest and
skipped; a partial shard is redone, and every answer is a pure function of (seed, prompt, sample).
The size on disk is capped (`max_bytes`); the sequence stream stops at the cap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dream_s_edge.distill import layers as layer_select
from dream_s_edge.distill.prompts import (
    PromptSpec,
    heldout_prompts,
    materialize,
    training_prompts,
    write_prompt_file,
)
from dream_s_edge.generation import GenerationConfig, build_prompt
from dream_s_edge.runners.target_torch import TorchTargetRunner
from dream_s_edge.targets import TargetAdapter
from runtime.decode import autoregressive_generate
from runtime.errors import TrainingError
from runtime.runner import RunnerLimits

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-distill-data"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DistillDataConfig:
    """What `dream-s-edge distill-data` builds."""

    out_dir: str  # folder of shards + manifest (created; an existing one is resumed)
    model: str = "default"  # 'default' (embedded target) or a local HF model folder
    num_scene: int = 96  # training prompts per source
    num_photo: int = 32
    num_text: int = 96
    num_heldout_scene: int = 6  # held-out prompts (validation τ, bench files)
    num_heldout_photo: int = 2
    samples_per_prompt: int = 0  # sampled answers per prompt besides the greedy one
    temperature: float = 0.7  # of the sampled answers
    max_new_tokens: int = 64  # answer length cap
    max_context: int = 512  # prompt + answer tokens
    shard_size: int = 16  # sequences per shard file
    max_bytes: int = 1 << 30  # stop adding shards beyond this size on disk
    band_low: int = 1  # entropy band: layers band_low .. floor(band_high_fraction * L), 1-based
    band_high_fraction: float = 0.4
    extra_layers: tuple[int, ...] = ()  # more hidden-state layers to store in full
    seed: int = 0
    generate_batch: int = 1  # answers generated together (HF generate, left-padded); 1 = the repo's own
    # loop, one prompt at a time. Batches of 8-16 are several times faster on a CPU; greedy answers
    # may then differ from unbatched ones where two logits nearly tie (padding changes the arithmetic).

    def to_dict(self) -> dict:
        out = asdict(self)
        out["extra_layers"] = list(self.extra_layers)
        return out


@dataclass
class _Stats:
    """Running sums for the entropy profile and the per-token layer choice."""

    entropy_sum: np.ndarray  # [L]
    layer_counts: np.ndarray  # [L + 1]
    tokens: int = 0

    def add(self, entropy: torch.Tensor, chosen: torch.Tensor, mask: torch.Tensor) -> None:
        self.entropy_sum += entropy[:, mask].double().sum(1).numpy()
        self.layer_counts += np.bincount(chosen[mask].numpy(), minlength=len(self.layer_counts))
        self.tokens += int(mask.sum())

    def to_dict(self) -> dict:
        return {"entropy_sum": self.entropy_sum.tolist(), "layer_counts": self.layer_counts.tolist(),
                "tokens": self.tokens}


def build_distill_data(config: DistillDataConfig) -> Path:
    """Builds (or resumes) a distillation data folder.

    Returns:
        The folder; its `manifest.json` lists the shards, sizes and the entropy-based layer choice.

    Raises:
        TrainingError: the folder holds data built with another configuration.
    """
    folder = Path(config.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = _load_eager(str(_default_dir()) if config.model == "default" else config.model)
    manifest = _open_manifest(folder, config, adapter)
    jobs = _jobs(config)
    done = sum(len(s["sequences"]) for s in manifest["shards"])
    stats = _Stats(np.asarray(manifest["stats"]["entropy_sum"]), np.asarray(manifest["stats"]["layer_counts"]),
                   int(manifest["stats"]["tokens"]))
    runner = TorchTargetRunner(adapter, RunnerLimits(config.max_context, 1))
    band = tuple(manifest["band"])
    pending: dict[str, torch.Tensor] = {}
    pending_ids: list[str] = []
    bar = tqdm(total=len(jobs), initial=done, desc="distill-data", unit="seq")
    for job, answer in _answers(adapter, runner, config, jobs[done:]):
        if manifest["bytes"] >= config.max_bytes:
            logger.warning("size cap reached (%d bytes >= %d); stopping", manifest["bytes"], config.max_bytes)
            break
        sid, tensors = _one_sequence(adapter, config, job, answer, band)
        stats.add(tensors["entropy"], tensors["intermed_layer"].long(), tensors["loss_mask"])
        pending.update({f"{sid}.{k}": v for k, v in tensors.items()})
        pending_ids.append(sid)
        if len(pending_ids) == config.shard_size:
            _flush(folder, manifest, pending, pending_ids, stats, band)
            pending, pending_ids = {}, []
        bar.update(1)
        bar.set_postfix(MB=f"{manifest['bytes'] / 1e6:.0f}")
    bar.close()
    if pending_ids:
        _flush(folder, manifest, pending, pending_ids, stats, band)
    _write_heldout(folder, config)
    _finish(folder, manifest)
    return folder


def _default_dir() -> Path:
    from dream_s_edge.embedded import ensure_default_target

    return ensure_default_target()


def _load_eager(path: str) -> TargetAdapter:
    """The target with eager attention: attention entropy and visual scores need the maps."""
    from dream_s_edge.targets import load_target

    return load_target(Path(path), attn_implementation="eager")


def _jobs(config: DistillDataConfig) -> list[tuple[int, int, PromptSpec]]:
    """(prompt index, sample index, prompt) in the fixed order sequences are built; sample 0 is greedy."""
    prompts = training_prompts(config.num_scene, config.num_photo, config.num_text, config.seed)
    return [(i, s, p) for i, p in enumerate(prompts) for s in range(1 + config.samples_per_prompt)]


def _prompt_of(adapter, config, job):
    image, question = materialize(job[2])
    return build_prompt(adapter, image, question, config.max_context)


def _answers(adapter, runner, config, jobs):
    """Yields (job, (prompt, answer ids [A])) in job order, one prompt at a time or in batches."""
    if config.generate_batch <= 1:
        for job in jobs:
            index, sample, _ = job
            prompt = _prompt_of(adapter, config, job)
            gen = GenerationConfig(max_new_tokens=config.max_new_tokens,
                                   temperature=0.0 if sample == 0 else config.temperature,
                                   seed=config.seed * 1_000_003 + index * 101 + sample, max_context=config.max_context)
            result = autoregressive_generate(
                runner, prompt, sampling=gen.sampling, max_new_tokens=gen.max_new_tokens,
                eos_ids=adapter.spec.eos_token_ids, rng=np.random.default_rng(gen.seed),
            )
            yield job, (prompt, result.tokens)
        return
    for start in range(0, len(jobs), config.generate_batch):
        chunk = jobs[start:start + config.generate_batch]
        prompts = [_prompt_of(adapter, config, job) for job in chunk]
        answers = batch_answers(adapter, prompts, chunk, config)
        yield from zip(chunk, zip(prompts, answers, strict=True), strict=True)


def batch_answers(adapter, prompts, jobs, config) -> list[np.ndarray]:
    """Answers of several prompts with HF `generate`, grouped by (image or not, greedy or sampled), each
    group left-padded into one batch; every answer is cut after its first end-of-sequence token (kept).

    Sampled groups are seeded from the first job of the group, so a rebuilt shard is identical.
    """
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, (prompt, job) in enumerate(zip(prompts, jobs, strict=True)):
        groups.setdefault((bool(prompt.extras), job[1] == 0), []).append(i)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(prompts)
    eos = set(adapter.spec.eos_token_ids)
    for (_, greedy), members in groups.items():
        index, sample, _ = jobs[members[0]]
        torch.manual_seed(config.seed * 1_000_003 + index * 101 + sample)
        new = _hf_generate(adapter, [prompts[i] for i in members], greedy, config)  # [b, A_max]
        for i, row in zip(members, new.tolist(), strict=True):
            stop = next((k for k, tok in enumerate(row) if tok in eos), len(row) - 1)
            out[i] = np.asarray(row[: stop + 1], dtype=np.int64)
    return out


@torch.no_grad()
def _hf_generate(adapter, prompts, greedy: bool, config) -> torch.Tensor:
    """Left-pads the prompts (and any per-token extra, [1, T]) and returns the new tokens [b, A_max]."""
    width = max(len(p.input_ids) for p in prompts)
    pad = int(adapter.spec.eos_token_ids[0])
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    extras: dict[str, list[torch.Tensor]] = {}
    for b, prompt in enumerate(prompts):
        T = len(prompt.input_ids)
        ids[b, width - T:] = torch.from_numpy(np.asarray(prompt.input_ids))
        mask[b, width - T:] = 1
        for name, value in prompt.extras.items():
            value = torch.from_numpy(np.asarray(value))
            if value.dim() == 2 and value.shape == (1, T):  # per-token extra: pad like the ids
                value = torch.nn.functional.pad(value, (width - T, 0))
            extras.setdefault(name, []).append(value)
    inputs = {name: torch.cat(values) for name, values in extras.items()}
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": config.temperature, "top_p": 1.0}
    out = adapter.model.generate(input_ids=ids, attention_mask=mask, **inputs, max_new_tokens=config.max_new_tokens,
                                 pad_token_id=pad, eos_token_id=list(adapter.spec.eos_token_ids), **sampling)
    return out[:, width:]


def _one_sequence(adapter, config, job, answer, band) -> tuple[str, dict[str, torch.Tensor]]:
    """Reads the target tensors of prompt + answer."""
    index, sample, _ = job
    prompt, tokens = answer
    tensors = teacher_forced_tensors(adapter, prompt, tokens, band, config.extra_layers)
    return f"{index:06d}-{sample}", tensors


@torch.no_grad()
def teacher_forced_tensors(adapter: TargetAdapter, prompt, answer: np.ndarray, band: tuple[int, int],
                           extra_layers: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """One eager pass over prompt + answer: the tensors listed in the module docstring.

    The prompt is one step (its visual scores are the prefill's, as at inference) and the answer a
    second step over the same cache.

    Args:
        adapter: the target, loaded with eager attention.
        prompt: `runtime.runner.Prompt` (T_p ids and the processor's extras).
        answer: [A] int64 answer ids.
        band: the entropy band (first, last), 1-based.
        extra_layers: more hidden-state layers to return.
    """
    L = adapter.spec.num_layers
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in prompt.extras.items()}
    prompt_ids = torch.from_numpy(np.asarray(prompt.input_ids, dtype=np.int64))[None]  # [1, T_p]
    answer_ids = torch.from_numpy(np.asarray(answer, dtype=np.int64))[None]  # [1, A]
    inputs["input_ids"] = prompt_ids
    pixels = {k: v for k, v in inputs.items() if k != "input_ids" and k.startswith(("pixel", "image"))}
    image_embeds = adapter.encode_images(**pixels) if "pixel_values" in pixels else None
    T_p, A = prompt_ids.shape[1], answer_ids.shape[1]
    layers = tuple(sorted({L, *range(band[0], band[1] + 1), *extra_layers}))
    cache = adapter.new_cache(T_p + A)
    embeds = [adapter.embed(prompt_ids, image_embeds)]  # [1, T_p, H]
    positions, delta = adapter.prompt_positions(inputs)
    first = adapter.decoder_step(embeds[0], positions, cache, 0, output_layers=layers, output_entropy=True,
                                 output_visual_attention=True, prefill_inputs=inputs)
    cache.advance(0, T_p)
    steps = [first]
    if A:
        embeds.append(adapter.embed(answer_ids))
        offsets = torch.arange(T_p, T_p + A)[None]
        steps.append(adapter.decoder_step(embeds[1], adapter.positions_for(offsets, delta), cache, T_p,
                                          output_layers=layers, output_entropy=True))
    hidden = {i: torch.cat([s.hidden_states[i][0] for s in steps]).float() for i in layers}  # [T, H]
    entropy = torch.cat([s.attention_entropy[:, 0] for s in steps], dim=1).float()  # [L, T]
    chosen = layer_select.per_token_layers(entropy, band)  # [T]
    stacked = torch.stack([hidden[i] for i in range(band[0], band[1] + 1)])  # [n_band, T, H]
    intermed = stacked[chosen - band[0], torch.arange(chosen.numel())]  # [T, H]
    T = T_p + A
    loss_mask = torch.zeros(T, dtype=torch.bool)
    loss_mask[T_p - 1:T - 1] = True
    visual_scores = torch.zeros(T)
    visual_scores[:T_p] = first.visual_attention[0, :T_p].float()
    image_token = adapter.spec.image_token_id
    ids = torch.cat([prompt_ids[0], answer_ids[0]])
    out = {
        "input_ids": ids.to(torch.int32),
        "embeds": torch.cat(embeds, dim=1)[0].to(torch.float16),
        "last": hidden[L].to(torch.float16),
        "intermed": intermed.to(torch.float16),
        "intermed_layer": chosen.to(torch.uint8),
        "entropy": entropy.to(torch.float16),
        "visual_scores": visual_scores,
        "visual_mask": (ids == image_token) if image_token is not None else torch.zeros(T, dtype=torch.bool),
        "loss_mask": loss_mask,
    }
    out.update({f"layer_{i}": hidden[i].to(torch.float16) for i in extra_layers})
    return {k: v.contiguous() for k, v in out.items()}


# ---- manifest and shards ----------------------------------------------------------------------

def _open_manifest(folder: Path, config: DistillDataConfig, adapter: TargetAdapter) -> dict:
    """The folder's manifest: an existing one (checked against the config), or a fresh one."""
    path = folder / MANIFEST
    spec = adapter.spec
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("config") != config.to_dict():
            raise TrainingError(
                "The data folder was built with another configuration.",
                f"folder={folder}, stored config={manifest.get('config')}",
                "use a new --out folder, or the same flags to resume",
            )
        _drop_unlisted_shards(folder, manifest)
        return manifest
    band = layer_select.entropy_band(spec.num_layers, config.band_low, config.band_high_fraction)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "config": config.to_dict(),
        "target": {"model": config.model, "num_layers": spec.num_layers, "hidden_size": spec.hidden_size,
                   "vocab_size": spec.vocab_size, "family": spec.family},
        "band": list(band), "shards": [], "bytes": 0,
        "stats": {"entropy_sum": [0.0] * spec.num_layers, "layer_counts": [0] * (spec.num_layers + 1), "tokens": 0},
        "prompts": [p.to_dict() for _, _, p in _jobs(config)[:: 1 + config.samples_per_prompt]],
        "heldout": [p.to_dict() for p in heldout_prompts(config.num_heldout_scene, config.num_heldout_photo,
                                                         config.seed)],
    }


def _drop_unlisted_shards(folder: Path, manifest: dict) -> None:
    """Deletes shard files a killed run wrote but never listed (they are rebuilt)."""
    listed = {s["file"] for s in manifest["shards"]}
    for path in folder.glob("shard-*.safetensors"):
        if path.name not in listed:
            path.unlink()


def _flush(folder: Path, manifest: dict, tensors: dict, ids: list[str], stats: _Stats, band) -> None:
    """Writes one shard, then the manifest that lists it (a kill between the two loses one shard)."""
    name = f"shard-{len(manifest['shards']):05d}.safetensors"
    save_file(tensors, str(folder / name), metadata={"format": FORMAT})
    size = (folder / name).stat().st_size
    manifest["shards"].append({"file": name, "sequences": ids, "bytes": size})
    manifest["bytes"] += size
    manifest["stats"] = stats.to_dict()
    selection = layer_select.summarize(stats.entropy_sum, stats.tokens, stats.layer_counts, band)
    manifest["layer_selection"] = selection.to_dict()
    _write_json(folder / MANIFEST, manifest)


def _finish(folder: Path, manifest: dict) -> None:
    manifest["complete"] = True
    manifest["sequences"] = sum(len(s["sequences"]) for s in manifest["shards"])
    _write_json(folder / MANIFEST, manifest)
    if "layer_selection" in manifest:
        layer_select.plot_entropy(layer_select.LayerSelection.from_dict(manifest["layer_selection"]),
                                  folder / "entropy.png")
    logger.info("distill data: %d sequences, %.1f MB in %s", manifest["sequences"], manifest["bytes"] / 1e6, folder)


def _write_heldout(folder: Path, config: DistillDataConfig) -> None:
    """Held-out prompts in the bench format: `heldout.jsonl` with {"image", "question"} per line."""
    write_prompt_file(folder, heldout_prompts(config.num_heldout_scene, config.num_heldout_photo, config.seed))


def _write_json(path: Path, data: dict) -> None:
    """Atomic write: a kill never leaves a half-written manifest."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def read_manifest(folder) -> dict:
    """The manifest of a data folder.

    Raises:
        TrainingError: no manifest, or another format.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TrainingError(f"No {MANIFEST} in {folder}.", hint="build the data with `dream-s-edge distill-data`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise TrainingError("Unknown distillation data format.",
                            f"format={manifest.get('format')!r} version={manifest.get('format_version')!r}")
    return manifest
