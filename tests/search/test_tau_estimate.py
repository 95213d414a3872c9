"""The cheap τ estimate equals the real loop's τ: a tiny float64 target, drafts extracted from a
supernet (and the oracle draft), greedy decoding, the same prompts; only the draft runs in the replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_supernet import _one_thread  # noqa: F401

from dream_s_edge.distill.losses import LossWeights
from dream_s_edge.draft.spec import DraftSpec
from dream_s_edge.generation import build_prompt
from dream_s_edge.runners.draft_factory import draft_runner, target_dims
from dream_s_edge.runners.target_torch import TorchTargetRunner
from runtime.accept import GREEDY
from runtime.decode import speculative_generate
from runtime.errors import UserInputError
from runtime.runner import RunnerLimits
from runtime.tree import TreeSpec
from search.sandwich import SupernetBatch, sandwich_choices, sandwich_step
from search.supernet import SearchSpace, SubnetChoice, Supernet, build_subnet
from search.tau_estimate import ReplayTarget, estimate_tau, record_target

CONTEXT, NEW = 256, 12
TREE = TreeSpec.dynamic(top_k=3, depth=4, node_budget=10)


@pytest.fixture(scope="module")
def setup(model_dirs, image):
    from dream_s_edge.targets import load_target

    adapter = load_target(model_dirs("smolvlm"), dtype=torch.float64)
    space = SearchSpace.for_target(adapter.spec.num_layers, num_layers=(1, 2), head_ratios=(0.5, 1.0))
    torch.manual_seed(0)
    spec = DraftSpec.from_name("dream-default", target_dims(adapter))
    net = Supernet(spec, adapter.text_embedding().weight, adapter.lm_head_weight(),
                   token_counts=torch.arange(adapter.spec.vocab_size).flip(0)).double()
    prompts = [build_prompt(adapter, None, "Count to five.", CONTEXT), build_prompt(adapter, image, "What is this?", CONTEXT)]
    recorder = TorchTargetRunner(adapter, RunnerLimits(CONTEXT, 1), feature_layers=space.feature_layers)
    records = [record_target(recorder, p, space.feature_layers, NEW + TREE.depth + 1) for p in prompts]
    _train(net, space, records, adapter.spec.num_layers)  # a draft that is accepted sometimes
    return adapter, net, space, prompts, records


def _batch(net, record, num_layers: int) -> SupernetBatch:
    """The record as one distillation sequence: prompt (target input embeddings) + continuation."""
    width = record.features.shape[1] // len(record.layers)
    feats = {layer: torch.from_numpy(np.concatenate([record.prefill.features, record.features])
                                     [:, i * width:(i + 1) * width]).double()[None]
             for i, layer in enumerate(record.layers)}
    answer = torch.from_numpy(record.tokens[:-1])
    embeds = torch.cat([torch.from_numpy(record.prefill.inputs_embeds).double(),
                        net.branches["cross_attention"].embed(answer)])[None]
    T = embeds.shape[1]
    mask = torch.arange(T) >= record.prompt.input_ids.shape[0] - 1
    return SupernetBatch(embeds, feats, torch.arange(T), feats[num_layers][0], feats[1][0], mask)


def _train(net, space, records, num_layers: int, steps: int = 40) -> None:
    """A short sandwich training on the records themselves (phase 1 skipped: the draft only needs some τ)."""
    batches = [_batch(net, r, num_layers) for r in records]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(steps):
        net.zero_grad(set_to_none=True)
        sandwich_step(net, batches[step % len(batches)], sandwich_choices(space, rng), LossWeights())
        optimizer.step()


def _real(adapter, model, prompt, tree=TREE):
    target = TorchTargetRunner(adapter, RunnerLimits(CONTEXT, tree.node_budget), feature_layers=model.spec.feature_layers)
    runner = draft_runner(adapter, model, CONTEXT, tree)
    return speculative_generate(target, runner, prompt, tree, GREEDY, NEW, adapter.spec.eos_token_ids)


@pytest.mark.parametrize("choice", [SubnetChoice("cross_attention", 2, 1.0, 1.0, -1, 1.0, None),
                                    SubnetChoice("cross_attention", 1, 0.5, 0.5, 1, 1.0, None)])
def test_estimate_equals_the_real_loop(setup, choice) -> None:
    adapter, net, space, prompts, records = setup
    layer = choice.feature_layer if choice.feature_layer != -1 else adapter.spec.num_layers
    model = build_subnet(net, SubnetChoice(**{**choice.to_dict(), "feature_layer": layer}))
    real = [_real(adapter, model, p) for p in prompts]
    runner = draft_runner(adapter, model, CONTEXT, TREE)
    est = estimate_tau(records, runner, model.spec.feature_layers, TREE, NEW, adapter.spec.eos_token_ids)
    want = np.sum([r.metrics.accept_counts for r in real], axis=0).tolist()
    assert est.accept_counts == want
    assert est.per_record == [r.metrics.tau for r in real]
    assert est.tau > 1.0  # the short training gives a draft the target accepts sometimes


def test_replay_refuses_missing_layers_and_short_records(setup) -> None:
    adapter, net, _, _, records = setup
    with pytest.raises(UserInputError, match="feature layers"):
        ReplayTarget(records[0], (0,), 10)
    model = build_subnet(net, SubnetChoice(feature_layer=adapter.spec.num_layers))
    runner = draft_runner(adapter, model, CONTEXT, TREE)
    with pytest.raises(UserInputError, match="too short"):
        estimate_tau(records, runner, model.spec.feature_layers, TREE, NEW + 5)
