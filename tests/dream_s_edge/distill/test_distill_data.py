"""Distillation data on a tiny target: contents, determinism, and a resume after a kill."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dream_s_edge.distill import DistillDataConfig, build_distill_data
from dream_s_edge.distill import data as data_module
from dream_s_edge.distill.dataset import DistillDataset, rank_indices
from runtime.errors import TrainingError


def _all_tensors(folder):
    out = {}
    for path in sorted(folder.glob("shard-*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_contents(tiny_data_dir, tiny_target_dir):
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["sequences"] == 8  # 3 + 2 + 3 prompts, greedy only
    assert manifest["bytes"] == sum(p.stat().st_size for p in tiny_data_dir.glob("shard-*.safetensors"))
    assert manifest["layer_selection"]["band"] == [1, 1] and len(manifest["layer_selection"]["profile"]) == 2
    assert (tiny_data_dir / "entropy.png").is_file()
    heldout = [json.loads(line) for line in (tiny_data_dir / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == 3 and all(h["image"] and h["question"] for h in heldout)
    seq = DistillDataset(tiny_data_dir)[0]
    T = seq["input_ids"].shape[0]
    assert seq["embeds"].shape == seq["last"].shape == seq["intermed"].shape == (T, 64)
    assert seq["embeds"].dtype == torch.float16 and seq["entropy"].shape == (2, T)
    mask = seq["loss_mask"]
    first = int(torch.nonzero(mask)[0])
    assert mask[first:T - 1].all() and not mask[:first].any() and not mask[T - 1]
    assert seq["visual_mask"][:first + 1].sum() == 4  # the tiny SmolVLM's 4 visual tokens
    assert (seq["visual_scores"][seq["visual_mask"]] > 0).all()


def test_resume_after_kill_is_identical(tiny_target_dir, tiny_data_dir, tiny_data_settings, tmp_path, monkeypatch):
    config = DistillDataConfig(out_dir=str(tmp_path / "d"), model=str(tiny_target_dir), **tiny_data_settings)
    real = data_module._one_sequence
    calls = {"n": 0}

    def dies_at_fifth(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through the second shard
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(data_module, "_one_sequence", dies_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        build_distill_data(config)
    assert len(json.loads((tmp_path / "d" / "manifest.json").read_text())["shards"]) == 1
    monkeypatch.setattr(data_module, "_one_sequence", real)
    build_distill_data(config)
    a, b = _all_tensors(tiny_data_dir), _all_tensors(tmp_path / "d")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same answers, same tensors, bit for bit


def test_other_config_refused(tiny_target_dir, tiny_data_dir):
    with pytest.raises(TrainingError, match="another configuration"):
        build_distill_data(DistillDataConfig(out_dir=str(tiny_data_dir), model=str(tiny_target_dir), seed=1))


def test_rank_indices_split_epochs():
    two = [rank_indices(10, 0, r, 2, 0, 5) for r in range(2)]
    assert sorted(two[0] + two[1]) == list(range(10))  # one epoch, no sequence on both ranks
    assert rank_indices(10, 0, 1, 2, 3, 4) == rank_indices(10, 0, 1, 2, 0, 7)[3:]  # pure in the sample index


def test_batched_generation_gives_the_same_greedy_answers(tiny_target_dir, tiny_data_dir, tiny_data_settings, tmp_path):
    """generate_batch > 1 (HF generate, left-padded, image and text prompts mixed in one chunk) stores
    the same greedy answers as the one-at-a-time loop."""
    settings = {**tiny_data_settings, "generate_batch": 4}
    build_distill_data(DistillDataConfig(out_dir=str(tmp_path / "b"), model=str(tiny_target_dir), **settings))
    one, batched = _all_tensors(tiny_data_dir), _all_tensors(tmp_path / "b")
    ids = sorted(k for k in one if k.endswith(".input_ids"))
    assert ids and ids == sorted(k for k in batched if k.endswith(".input_ids"))
    assert all(torch.equal(one[k], batched[k]) for k in ids)


def test_several_folders_read_as_one(tiny_data_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_data_dir, tmp_path / "again")
    one, both = DistillDataset(tiny_data_dir), DistillDataset(f"{tiny_data_dir},{copy}")
    assert len(both) == 2 * len(one) and both.manifest == one.manifest
    for i in (0, len(one) - 1):
        a, b = one[i], both[len(one) + i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_folders_of_other_layers_are_refused(tiny_data_dir, tiny_supernet_data_dir):
    with pytest.raises(TrainingError, match="config.extra_layers") as info:
        DistillDataset(f"{tiny_data_dir},{tiny_supernet_data_dir}")
    assert "--extra-layers" in info.value.hint
    with pytest.raises(TrainingError, match="Empty folder name"):
        DistillDataset(f"{tiny_data_dir},")
