"""Entropy-adaptive choice of the intermediate layer the draft's early block is distilled from.

DREAM measures the attention entropy of each target layer l at each query i,
H_l(i) = -sum_j a_l(i, j) log a_l(i, j), mean over heads (eager attention; the target adapter's
`attention_entropy` readout), and distils the early draft block towards the hidden state of the
lowest-entropy layer inside a band of shallow layers 1 .. floor(0.4 L). The reference picks it per
token; we store that per-token choice in the distillation data (`per_token_layers`) and also record
the band's lowest-entropy layer on average (`select_layer`) with the whole profile in the draft's
config. Layers are numbered as HF hidden states: layer l's attention produces hidden state l.

Data flow: distill/data.py calls `per_token_layers` per sequence and accumulates the profile;
`LayerSelection` goes into the data manifest, then into the trained draft's `config.json`;
`plot_entropy` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import UserInputError


def entropy_band(num_layers: int, low: int = 1, high_fraction: float = 0.4) -> tuple[int, int]:
    """The candidate layers (first, last), inclusive, 1-based: DREAM's 1 .. floor(0.4 L)."""
    high = max(low, min(num_layers, math.floor(high_fraction * num_layers)))
    if not 1 <= low <= num_layers:
        raise UserInputError("The entropy band must start inside the target.", f"low={low}, L={num_layers}")
    return low, high


def per_token_layers(entropy: torch.Tensor, band: tuple[int, int]) -> torch.Tensor:
    """The lowest-entropy layer of the band at each token.

    Args:
        entropy: [L, T] attention entropy per layer (row l - 1 is layer l) and query.
        band: (first, last) candidate layers, inclusive, 1-based.

    Returns:
        [T] int64 chosen layers in first .. last (ties go to the shallower layer).
    """
    low, high = band
    return low + torch.argmin(entropy[low - 1:high].float(), dim=0)


def select_layer(profile, band: tuple[int, int]) -> int:
    """The band's layer with the lowest mean entropy (ties go to the shallower one).

    Args:
        profile: [L] mean attention entropy per layer (index l - 1 is layer l).
        band: (first, last) candidate layers, inclusive, 1-based.
    """
    low, high = band
    values = np.asarray(profile, dtype=np.float64)[low - 1:high]
    return low + int(np.argmin(values))


@dataclass(frozen=True)
class LayerSelection:
    """The recorded choice: what the draft's early block was distilled towards, and why.

    Attributes:
        mode: "per_token" (each token's lowest-entropy band layer, the DREAM reference).
        band: (first, last) candidate layers, 1-based, inclusive.
        layer: the band's lowest-entropy layer on the mean profile.
        profile: mean attention entropy per layer 1 .. L over the answer tokens (nats).
        token_share: fraction of answer tokens whose per-token choice is each band layer.
    """

    mode: str
    band: tuple[int, int]
    layer: int
    profile: tuple[float, ...]
    token_share: dict[int, float]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "band": list(self.band), "layer": self.layer,
                "profile": [round(v, 5) for v in self.profile],
                "token_share": {str(k): round(v, 5) for k, v in self.token_share.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> LayerSelection:
        return cls(mode=data["mode"], band=tuple(data["band"]), layer=int(data["layer"]),
                   profile=tuple(float(v) for v in data["profile"]),
                   token_share={int(k): float(v) for k, v in data["token_share"].items()})


def summarize(entropy_sum, token_count: int, layer_counts, band: tuple[int, int]) -> LayerSelection:
    """Builds the selection from accumulated sums.

    Args:
        entropy_sum: [L] summed entropy per layer over `token_count` answer tokens.
        token_count: answer tokens summed.
        layer_counts: [L + 1] how many answer tokens chose each layer (index = layer).
        band: the candidate band.
    """
    profile = np.asarray(entropy_sum, dtype=np.float64) / max(token_count, 1)
    counts = np.asarray(layer_counts, dtype=np.float64)
    share = {layer: counts[layer] / max(counts.sum(), 1.0) for layer in range(band[0], band[1] + 1)}
    return LayerSelection("per_token", band, select_layer(profile, band), tuple(profile.tolist()), share)


def plot_entropy(selection: LayerSelection, path) -> Path:
    """Draws the entropy profile, the band and the choice into a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(1, len(selection.profile) + 1)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax.plot(layers, selection.profile, marker="o", ms=3)
    ax.axvspan(selection.band[0] - 0.5, selection.band[1] + 0.5, alpha=0.15, label="candidate band")
    ax.axvline(selection.layer, color="C3", ls="--", label=f"selected layer {selection.layer}")
    ax.set(xlabel="target layer", ylabel="mean attention entropy (nats)", title="Attention entropy per layer")
    ax.legend()
    band = sorted(selection.token_share)
    bx.bar(band, [selection.token_share[k] for k in band])
    bx.set(xlabel="target layer", ylabel="share of answer tokens", title="Per-token lowest-entropy layer")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
