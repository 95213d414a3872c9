"""Entropy-adaptive layer selection on synthetic entropy profiles."""

from __future__ import annotations

import torch

from dream_s_edge.distill.layers import (
    LayerSelection,
    entropy_band,
    per_token_layers,
    plot_entropy,
    select_layer,
    summarize,
)


def test_band_is_dreams_shallow_band():
    assert entropy_band(30) == (1, 12)
    assert entropy_band(2) == (1, 1)
    assert entropy_band(30, low=2, high_fraction=0.6) == (2, 18)


def test_lowest_entropy_layer_inside_the_band():
    profile = [3.0, 2.5, 1.2, 2.0, 2.2, 0.1, 0.05, 3.0, 3.0, 3.0]  # layers 1..10; 6, 7 lie outside the band
    assert select_layer(profile, entropy_band(10)) == 3
    assert select_layer([2.0, 1.0, 1.0, 2.0], (1, 4)) == 2  # ties go to the shallower layer


def test_per_token_choice_and_summary(tmp_path):
    entropy = torch.tensor([[1.0, 0.2, 3.0], [0.5, 0.9, 2.0], [0.7, 0.1, 0.1], [0.0, 0.0, 0.0]])  # [L=4, T=3]
    chosen = per_token_layers(entropy, (1, 3))
    assert chosen.tolist() == [2, 3, 3]  # layer 4 (entropy 0) is outside the band
    counts = torch.bincount(chosen, minlength=5).numpy()
    selection = summarize(entropy.sum(1).numpy(), 3, counts, (1, 3))
    assert selection.layer == 3  # mean entropy of layers 1..3: 4.2 / 3, 3.4 / 3, 0.9 / 3
    assert selection.token_share == {1: 0.0, 2: 1 / 3, 3: 2 / 3}
    assert abs(sum(selection.token_share.values()) - 1) < 1e-9
    again = LayerSelection.from_dict(selection.to_dict())
    assert (again.layer, again.band, again.mode) == (3, (1, 3), "per_token")
    assert plot_entropy(selection, tmp_path / "e.png").stat().st_size > 1000
