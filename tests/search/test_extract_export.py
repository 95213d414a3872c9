"""An extracted sub-network with fewer heads, a narrower FFN and fewer blocks goes through the ordinary
export path, and its onnxruntime draft runner equals the PyTorch one step by step."""

from __future__ import annotations

import numpy as np
import torch

from runtime.manifest import Manifest
from runtime.ort_draft import OrtDraftRunner
from search.supernet import SubnetChoice, Supernet, build_subnet


def test_extracted_subnet_exports_and_matches_torch(exported_tiny, tiny_tree, image, tmp_path) -> None:
    from dream_s_edge.draft.checkpoint import save_draft
    from dream_s_edge.draft.spec import DraftSpec
    from dream_s_edge.generation import build_prompt
    from dream_s_edge.runners.draft_factory import draft_runner, load_draft_model, target_dims
    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from export.pipeline import ExportConfig, export_artifacts
    from runtime.runner import RunnerLimits

    adapter = exported_tiny[1]
    torch.manual_seed(0)
    spec = DraftSpec.from_name("dream-default", target_dims(adapter))
    net = Supernet(spec, adapter.text_embedding().weight, adapter.lm_head_weight())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    net.reorder_by_importance()
    choice = SubnetChoice(num_layers=1, head_ratio=0.5, ffn_ratio=0.5, feature_layer=adapter.spec.num_layers)
    sub = build_subnet(net, choice)
    assert sub.spec.num_heads * sub.spec.head_dim < sub.spec.hidden_size  # a narrower attention than the stream
    save_draft(tmp_path / "draft", sub, sub.spec)
    export_artifacts(ExportConfig(out=tmp_path / "art", max_context=64, draft=str(tmp_path / "draft"),
                                  tree=tiny_tree), adapter=adapter)
    model = load_draft_model(adapter, tmp_path / "draft")
    manifest = Manifest.load(tmp_path / "art")
    target = TorchTargetRunner(adapter, RunnerLimits(64, 10), feature_layers=model.spec.feature_layers)
    ref = draft_runner(adapter, model, 64, tiny_tree)
    got = OrtDraftRunner(manifest, np.load(manifest.path("embeddings")), threads=1)
    prompt = build_prompt(adapter, image, "What is it?", 64)
    result = target.prefill(prompt)
    steps = [
        lambda r: r.prefill(result, prompt.input_ids, 7, 3),
        lambda r: r.tree_step(np.array([5, 6]), np.full(2, r.length), np.array([0, 1]), np.zeros((2, 2), bool), 3),
        lambda r: r.advance(np.array([5, 9]), result.features[:2], 3),
    ]
    for step in steps:
        a, b = step(ref), step(got)
        np.testing.assert_array_equal(b.token_ids, a.token_ids)
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
