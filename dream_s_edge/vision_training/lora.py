"""Low-rank adapters (LoRA) on the language model's attention projections, for vision training.

Training wraps the chosen attention projections (query, key, value, output: `projections="qkvo"`) of
every decoder layer with a rank-`r` update
`W x + (alpha / r) * B (A x)` (A: [r, in], B: [out, r], B starts at zero so training starts from the
frozen model). What ships is the pair (A, B) per projection under `lora.<module path>.{A,B}`, a few
hundred kilobytes; whoever loads the asset merges them into the dense weights once (`merge_lora`), so
every later consumer (export, the runtime, the draft's distillation) sees a plain model.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.vision_training.config import projection_suffixes

LORA_PREFIX = "lora."


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)  # [r, in]
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # [out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def attach_lora(
    text_model: nn.Module, rank: int, alpha: float, prefix: str, projections: str
) -> dict[str, LoRALinear]:
    """Wraps the attention projections named by `projections` (letters of PROJECTIONS) of
    `text_model` in place; returns the adapters by the full name (`prefix` + module path) of the
    projection they wrap."""
    suffixes, adapters = projection_suffixes(projections), {}
    for name, module in list(text_model.named_modules()):
        if name.endswith(suffixes) and isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            adapter = LoRALinear(module, rank, alpha).to(module.weight.device)
            setattr(text_model.get_submodule(parent_name), child, adapter)
            adapters[prefix + name] = adapter
    return adapters


def lora_tensors(adapters: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The shippable (A, B) pairs with the scale folded into B: `lora.<name>.A` [r, in], `.B` [out, r]."""
    out = {}
    for name, adapter in adapters.items():
        out[f"{LORA_PREFIX}{name}.A"] = adapter.A.detach().cpu().contiguous()
        out[f"{LORA_PREFIX}{name}.B"] = (adapter.B.detach() * adapter.scale).cpu().contiguous()
    return out


def load_lora_tensors(adapters: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of lora_tensors, into attached adapters (for resuming a run). The tensors must hold
    exactly the adapters' pairs."""
    stored = {k[len(LORA_PREFIX) : -2] for k in tensors if k.startswith(LORA_PREFIX) and k.endswith(".A")}
    if stored != set(adapters):
        raise ValueError(
            f"LoRA tensors name {len(stored)} projections, the model has adapters on {len(adapters)}: "
            f"e.g. {sorted(stored ^ set(adapters))[:2]}; attach adapters with the projections they were trained on"
        )
    with torch.no_grad():
        for name, adapter in adapters.items():
            adapter.A.copy_(tensors[f"{LORA_PREFIX}{name}.A"])
            adapter.B.copy_(tensors[f"{LORA_PREFIX}{name}.B"] / adapter.scale)


@torch.no_grad()
def merge_lora(model: nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Adds `B @ A` of every `lora.*` pair in `tensors` to the named Linear weights of `model`.

    Returns the number of merged projections. Names that `model` lacks raise KeyError.
    """
    merged = 0
    for key in tensors:
        if key.startswith(LORA_PREFIX) and key.endswith(".A"):
            name = key[len(LORA_PREFIX) : -2]
            weight = model.get_submodule(name).weight  # [out, in]
            update = tensors[f"{LORA_PREFIX}{name}.B"].float() @ tensors[key].float()
            weight.add_(update.to(weight.dtype).to(weight.device))
            merged += 1
    return merged


def split_lora(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain tensors, lora tensors) of an asset."""
    lora = {k: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)}
    return {k: v for k, v in tensors.items() if k not in lora}, lora
