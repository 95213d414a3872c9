"""What a training run needs around its loop: processes, the lr schedule, checkpoints, the log.

* Processes: `setup_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). One
  process without it; with it, a process group on NCCL when CUDA is present, else gloo. The same
  code runs on one CPU, one GPU or several GPUs, with no change.
* Checkpoints: `<out>/checkpoint/state.pt`, written atomically by rank 0: draft (or supernet)
  weights, optimizer and scheduler state, the step, the RNG states and the training strategy's own
  state (a supernet's importance sums). The data order, the per-step noise and a supernet's sampled
  sub-networks are pure functions of (seed, step, rank), so a run killed at any point and resumed
  from its last checkpoint redoes the same steps and reaches the same weights.
* Log: `<out>/train_log.jsonl`, one line per step; on resume lines past the checkpoint are dropped,
  so the loss curve continues without a duplicate or a jump.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from runtime.errors import TrainingError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class Processes:
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this call created the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Processes:
    """Joins torchrun's process group if launched by it; picks the device.

    Args:
        device: "auto" (cuda:LOCAL_RANK when CUDA is present, else cpu), "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Processes(rank=rank, world=world, device=dev, owns_group=owns)


def barrier(procs: Processes) -> None:
    if procs.world > 1:
        dist.barrier()


def lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warm-up over `warmup` steps, then cosine decay to `floor` of the peak at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of one step's randomness on one rank (feature noise)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 4099 + rank)


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, step: int, extra: dict) -> Path:
    """Writes the resumable state after `step` steps (rank 0 only; atomic rename)."""
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        **extra,
    }
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)
    return folder / STATE_FILE


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, config_dict: dict,
                    on_state: Callable[[dict], None] | None = None) -> int:
    """Restores a run from its checkpoint, if any; returns the step to continue from (0 if none).

    Args:
        out_dir: the run folder.
        model: receives the checkpoint's weights.
        optimizer: receives its optimizer state.
        scheduler: receives its schedule state.
        config_dict: the run's `TrainConfig.to_dict()`; the checkpoint's must be equal.
        on_state: called with the whole checkpoint after the rest is restored (strategy state).

    Raises:
        TrainingError: the checkpoint was written by a run with another configuration.
    """
    path = out_dir / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != config_dict:
        changed = sorted(k for k in config_dict if state.get("config", {}).get(k) != config_dict[k])
        raise TrainingError("The output folder holds a checkpoint of another training configuration.",
                            f"fields that differ: {changed}", "use a new --out folder, or the same flags to resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if on_state is not None:
        on_state(state)
    logger.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


def trim_log(out_dir: Path, step: int) -> None:
    """Drops log lines of steps after `step` (they were done after the last checkpoint)."""
    path = out_dir / LOG_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def append_log(out_dir: Path, record: dict) -> None:
    with (out_dir / LOG_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(out_dir) -> list[dict]:
    """The run's per-step records."""
    path = Path(out_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def parameter_digest(model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights (sum of |w| in float64), for the ranks-in-sync check."""
    return float(sum(p.detach().double().abs().sum().item() for p in model.parameters()))


def gather_digests(procs: Processes, digest: float) -> list[float]:
    """Every rank's digest (a list of one without a process group)."""
    if procs.world == 1:
        return [digest]
    out = [None] * procs.world
    dist.all_gather_object(out, digest)
    return [float(d) for d in out]


def plot_log(out_dir) -> Path:
    """Draws the run's loss terms and validation τ per step into `<out>/train_log.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(out_dir)
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val_tau" in r]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in ("loss", "kl", "feat", "intermed"):
        ax.plot([r["step"] for r in steps], [r[name] for r in steps], label=name, lw=0.8)
    for i, resume in enumerate(r for r in records if r.get("resumed")):
        ax.axvline(resume["step"], color="0.4", ls="--", lw=0.8, label="resumed" if i == 0 else None)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax.legend()
    bx.plot([r["step"] for r in vals], [r["val_tau"] for r in vals], marker="o")
    bx.set(xlabel="step", ylabel="τ", title="Validation τ (speculative loop)")
    fig.tight_layout()
    path = Path(out_dir) / "train_log.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
