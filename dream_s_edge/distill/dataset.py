"""Reading distillation data back: sequences by index, and the tensors one training step needs.

`DistillDataset(folder)` indexes the shards a manifest lists (distill/data.py writes them), of one
folder or several (`"A,B"`);
`training_example(seq, spec, ...)` turns one stored sequence into the draft's inputs and targets,
applying the draft's visual token compression (VTC) exactly as the runner does at prefill: the
stream keeps every text position and the most-attended visual positions, the feature memory keeps
every position.

`epoch_order` / `rank_indices` fix the data order as a pure function of (seed, epoch, rank), so a
resumed run reads the same sequences in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dream_s_edge.distill.data import read_manifest
from dream_s_edge.draft.spec import DraftSpec
from dream_s_edge.draft.vtc import select_kept
from runtime.errors import TrainingError

# Manifest fields that must agree across the folders of one dataset (what a sequence's tensors mean).
COMPATIBLE_FIELDS = ("target", "band")
COMPATIBLE_CONFIG = ("model", "extra_layers", "max_context")


def data_folders(spec) -> list[Path]:
    """The folders of a `--data` value: one path, or several joined by commas."""
    parts = [p.strip() for p in str(spec).split(",")]
    if not all(parts):
        raise TrainingError(f"Empty folder name in the data folders {spec!r}.",
                            hint="pass one folder, or several separated by commas: --data RUNS/a,RUNS/b")
    return [Path(p) for p in parts]


class DistillDataset:
    """The sequences of one or more distillation data folders, folder by folder in manifest order.

    Several folders (`"A,B"`, e.g. distill-data runs with other seeds) read as one dataset; they must
    come from the same target with the same stored layers. The first folder's manifest (held-out
    prompts, layer selection) stands for the whole.

    Raises:
        TrainingError: a folder without a manifest, folders that do not agree, or no sequences.
    """

    def __init__(self, folders):
        self.folders = data_folders(folders)
        manifests = [read_manifest(f) for f in self.folders]
        self.manifest = manifests[0]
        for folder, manifest in zip(self.folders[1:], manifests[1:], strict=True):
            _check_compatible(self.folders[0], self.manifest, folder, manifest)
        self.index = [(folder / shard["file"], sid) for folder, manifest in zip(self.folders, manifests, strict=True)
                      for shard in manifest["shards"] for sid in shard["sequences"]]
        if not self.index:
            raise TrainingError(f"The data folder {folders} holds no sequences.",
                                hint="build some with `dream-s-edge distill-data`")
        self._shard_path: Path | None = None
        self._shard: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Sequence i as {name: tensor} (names of the data.py docstring)."""
        path, sid = self.index[i]
        if path != self._shard_path:  # one shard in memory at a time
            self._shard = load_file(str(path))
            self._shard_path = path
        prefix = f"{sid}."
        return {k[len(prefix):]: v for k, v in self._shard.items() if k.startswith(prefix)}


def _check_compatible(first: Path, reference: dict, folder: Path, manifest: dict) -> None:
    """Refuses a folder whose sequences were stored for another target or other layers."""
    pairs = [(f, reference.get(f), manifest.get(f)) for f in COMPATIBLE_FIELDS]
    pairs += [(f"config.{f}", reference["config"].get(f), manifest["config"].get(f)) for f in COMPATIBLE_CONFIG]
    for field, want, got in pairs:
        if want != got:
            raise TrainingError(
                f"The data folders {first} and {folder} do not agree on {field}.",
                f"{first}: {want!r}; {folder}: {got!r}",
                hint="build every folder with the same --model, --extra-layers and --max-context",
            )


@dataclass
class TrainingExample:
    """One sequence as the draft sees it (batch 1, T' stream tokens, M = T feature positions).

    Attributes:
        embeds: [1, T', H] the stream's inputs (the target's layer-0 inputs at kept positions).
        features: [1, M, F] target features (the spec's feature layers, concatenated) at every position.
        positions: [T'] int64 kept absolute positions.
        last: [T', H] target last-layer features at the kept positions.
        intermed: [T', H] selected intermediate features at the kept positions.
        mask: [T'] bool answer positions.
        answer_start: position of the first answer token (roots of the unrolled steps start there).
    """

    embeds: torch.Tensor
    features: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    intermed: torch.Tensor
    mask: torch.Tensor
    answer_start: int


INTERMED_SOURCES = ("entropy", "last")


def training_example(seq: dict[str, torch.Tensor], spec: DraftSpec, device, noise: float = 0.0,
                     generator: torch.Generator | None = None, intermed_source: str = "entropy") -> TrainingExample:
    """Builds one draft input from a stored sequence.

    Args:
        seq: a `DistillDataset` item.
        spec: the draft's spec (feature layers, VTC ratio).
        device: where the tensors go.
        noise: amplitude a of uniform noise U(-a, a) added to the input features (EAGLE), 0 = none.
        generator: CPU generator of that noise (seeded per step, so resumes are exact).
        intermed_source: the early block's target: "entropy" (DREAM: each token's lowest-entropy band
            layer, as stored) or "last" (the last layer, the ablation without entropy selection).

    Raises:
        TrainingError: the data lacks a feature layer the draft reads.
    """
    T = seq["input_ids"].shape[0]
    positions = torch.arange(T)
    if spec.visual_keep_ratio < 1.0 and bool(seq["visual_mask"].any()):
        positions = select_kept(seq["visual_scores"], seq["visual_mask"], spec.visual_keep_ratio)
    features = torch.cat([_layer(seq, i, spec.target_num_layers) for i in spec.feature_layers], dim=-1).float()
    if noise > 0:
        features = features + (torch.rand(features.shape, generator=generator) * 2 - 1) * noise
    mask = seq["loss_mask"].bool()
    answer_start = int(torch.nonzero(mask)[0]) + 1 if bool(mask.any()) else T
    return TrainingExample(
        embeds=seq["embeds"][positions].float()[None].to(device),
        features=features[None].to(device),
        positions=positions.to(device),
        last=seq["last"][positions].float().to(device),
        intermed=seq[_INTERMED_KEYS[intermed_source]][positions].float().to(device),
        mask=mask[positions].to(device),
        answer_start=answer_start,
    )


_INTERMED_KEYS = {"entropy": "intermed", "last": "last"}


def _layer(seq: dict[str, torch.Tensor], index: int, num_layers: int) -> torch.Tensor:
    key = "last" if index == num_layers else f"layer_{index}"
    if key not in seq:
        raise TrainingError(
            f"The distillation data has no hidden state of target layer {index}.",
            f"stored: {sorted(k for k in seq if k == 'last' or k.startswith('layer_'))}",
            f"rebuild the data with extra_layers including {index}",
        )
    return seq[key]


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """[size] the permutation of sequence indices of one epoch."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def rank_indices(size: int, seed: int, rank: int, world: int, start: int, count: int) -> list[int]:
    """Sequence indices this rank reads as its samples start .. start + count - 1.

    Each epoch's permutation is split round-robin over ranks (the tail that does not divide evenly is
    dropped), so ranks never share a sequence within an epoch.
    """
    per_rank = size // world
    if per_rank < 1:
        raise TrainingError("Fewer sequences than training processes.", f"{size} sequences, {world} processes")
    out = []
    for n in range(start, start + count):
        epoch, i = divmod(n, per_rank)
        out.append(int(epoch_order(size, seed, epoch)[i * world + rank]))
    return out


def answer_token_counts(data: DistillDataset, vocab_size: int) -> torch.Tensor:
    """[V] how often each target token is an answer token in the data (orders a reduced draft vocabulary)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for i in range(len(data)):
        seq = data[i]
        ids = seq["input_ids"].long()[1:][seq["loss_mask"].bool()[:-1]]
        counts += torch.bincount(ids, minlength=vocab_size).double()
    return counts
