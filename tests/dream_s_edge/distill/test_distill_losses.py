"""The losses (a true per-token KL) and the training-time-test unroll against the real draft runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dream_s_edge.distill.losses import LossWeights, distill_losses, kl_per_token
from dream_s_edge.distill.unroll import unrolled_forward
from dream_s_edge.draft import DraftSpec, DreamDraft, TargetDims
from dream_s_edge.draft.model import DraftOutput
from dream_s_edge.runners.draft_torch import TorchDraftRunner
from runtime.runner import PrefillResult

H, V = 32, 50
TARGET = TargetDims(hidden_size=H, vocab_size=V, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=64)


def _hand_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return np.array([sum(pi * np.log(pi / qi) for pi, qi in zip(pr, qr, strict=True)) for pr, qr in zip(p, q, strict=True)])


def test_kl_is_a_true_per_token_kl():
    rng = np.random.default_rng(0)
    p_logits, q_logits = rng.standard_normal((3, 7)) * 2, rng.standard_normal((3, 7)) * 2
    got = kl_per_token(torch.tensor(p_logits), torch.tensor(q_logits)).numpy()
    want = _hand_kl(p_logits, q_logits)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want.min() > 0.05  # a vocabulary mean (the reference's bug) would be 7x smaller
    assert kl_per_token(torch.tensor(p_logits), torch.tensor(p_logits)).abs().max() < 1e-6


def test_kl_with_reduced_vocabulary_renormalizes_the_target():
    rng = np.random.default_rng(1)
    p_logits, q_logits = rng.standard_normal((2, 9)), rng.standard_normal((2, 4))
    d2t = torch.tensor([0, 2, 5, 8])
    got = kl_per_token(torch.tensor(p_logits), torch.tensor(q_logits), d2t).numpy()
    np.testing.assert_allclose(got, _hand_kl(p_logits[:, [0, 2, 5, 8]], q_logits), rtol=1e-5)


def test_distill_losses_mask_and_weights():
    torch.manual_seed(0)
    T, head = 5, torch.randn(V, H)
    last, intermed = torch.randn(T, H), torch.randn(T, H)
    out = DraftOutput(hidden=torch.randn(1, T, H), features=torch.randn(1, T, H),
                      logits=torch.randn(1, T, V), early=torch.randn(1, T, H))
    mask = torch.tensor([False, True, True, False, True])
    terms = distill_losses(out, last, intermed, mask, head, LossWeights(kl=1.0, feat=0.5, intermed=0.25))
    kl = _hand_kl((last[mask] @ head.T).numpy(), out.logits[0][mask].numpy()).mean()
    feat = torch.nn.functional.smooth_l1_loss(out.features[0][mask], last[mask])
    inter = torch.nn.functional.smooth_l1_loss(out.early[0][mask], intermed[mask])
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["feat"].item() == pytest.approx(feat.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(kl + 0.5 * feat.item() + 0.25 * inter.item(), rel=1e-5)


def _random_draft(**overrides) -> DreamDraft:
    spec = DraftSpec.from_name("dream-default", TARGET, visual_keep_ratio=1.0, **overrides)
    g = torch.Generator().manual_seed(0)
    model = DreamDraft(spec, torch.randn(V, H, generator=g), 0.3 * torch.randn(V, H, generator=g))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model.double().eval()


@pytest.mark.parametrize("overrides", [{}, {"num_layers": 3, "cross_attention_position": 1}])
def test_unroll_matches_the_runner_tree_chain(overrides):
    """Step k at position R + k equals the runner's depth-k tree node with the root at R."""
    model = _random_draft(**overrides)
    n, R, steps = 9, 5, 3
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V, size=n)
    features = rng.standard_normal((n, H))
    with torch.no_grad():
        embeds = model.embed(torch.as_tensor(ids))[None]
        outs = unrolled_forward(model, embeds, torch.as_tensor(features)[None], torch.arange(n), steps)
        plain = model(embeds, torch.as_tensor(features)[None])
    torch.testing.assert_close(outs[0].logits, plain.logits)
    runner = TorchDraftRunner(model, TARGET, max_context=16, scratch_slots=4, max_depth=steps)
    prefill = PrefillResult(logits=np.zeros(V, np.float32), features=features[:R])
    proposals = [runner.prefill(prefill, ids[:R], int(ids[R]), top_k=3)]
    for depth in range(1, steps + 1):
        mask = np.zeros((depth, 4), dtype=bool)[-1:]
        mask[0, :depth] = True
        proposals.append(runner.tree_step(ids[R + depth: R + depth + 1], np.array([R + depth]),
                                          np.array([depth - 1]), mask, top_k=3))
    for k, proposal in enumerate(proposals):
        logp = torch.log_softmax(outs[k].logits[0, R + k], -1).numpy()
        np.testing.assert_allclose(proposal.logprobs[0], logp[proposal.token_ids[0]], atol=1e-6)
        assert proposal.token_ids[0][0] == int(np.argmax(logp))
