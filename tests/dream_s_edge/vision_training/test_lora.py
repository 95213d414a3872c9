"""LoRA adapters: a zero update at the start, exact merge into dense weights, and a lossless round trip."""

import pytest
import torch
from torch import nn

from dream_s_edge.vision_training.lora import (
    attach_lora,
    load_lora_tensors,
    lora_tensors,
    merge_lora,
    split_lora,
)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(4, 8)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"self_attn": _Attn()}) for _ in range(2)])

    def forward(self, x):  # [B, 8] -> [B, 8]
        for layer in self.layers:
            attn = layer["self_attn"]
            x = x + attn.o_proj(attn.v_proj(x)) + attn.q_proj(x)
        return x


def test_adapters_start_as_identity_and_merge_exactly():
    torch.manual_seed(0)
    model, x = _Tiny(), torch.randn(3, 8)
    reference = model(x)
    adapters = attach_lora(model, rank=2, alpha=4.0, prefix="", projections="qv")
    assert sorted(adapters) == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert torch.equal(model(x), reference)  # B starts at zero
    for adapter in adapters.values():
        nn.init.normal_(adapter.B)
    adapted = model(x)
    assert not torch.allclose(adapted, reference)

    fresh = _Tiny()
    fresh.load_state_dict(
        {k.replace(".base", ""): v for k, v in model.state_dict().items() if ".A" not in k and ".B" not in k}
    )
    tensors = lora_tensors(adapters)
    assert merge_lora(fresh, tensors) == 4
    assert torch.allclose(fresh(x), adapted, atol=1e-5)


def test_round_trip_and_split():
    torch.manual_seed(1)
    model = _Tiny()
    adapters = attach_lora(model, rank=2, alpha=4.0, prefix="text.", projections="qv")
    for adapter in adapters.values():
        nn.init.normal_(adapter.B)
    tensors = lora_tensors(adapters)
    other = attach_lora(_Tiny(), rank=2, alpha=4.0, prefix="text.", projections="qv")
    load_lora_tensors(other, tensors)
    assert all(
        torch.allclose(other[n].B, adapters[n].B) and torch.equal(other[n].A, adapters[n].A) for n in adapters
    )
    plain, lora = split_lora({**tensors, "model.vision_model.w": torch.zeros(1)})
    assert list(plain) == ["model.vision_model.w"] and lora.keys() == tensors.keys()


def test_projections_choose_the_wrapped_modules_and_must_match_on_load():
    model = _Tiny()
    adapters = attach_lora(model, rank=2, alpha=4.0, prefix="", projections="qvo")
    assert sorted(adapters) == [f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "oqv"]
    with pytest.raises(ValueError, match="letters of"):
        attach_lora(_Tiny(), rank=2, alpha=4.0, prefix="", projections="qx")
    with pytest.raises(ValueError, match="projections they were trained on"):
        load_lora_tensors(attach_lora(_Tiny(), rank=2, alpha=4.0, prefix="", projections="qv"), lora_tensors(adapters))
