"""TensorRT runners on CPU (host memory, onnxruntime-backed contexts): same tokens as the ORT
runners, bindings set only on change, KV compaction on the 'device'; the real engine on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from trt_fakes import fake_graphs

from runtime.cuda_memory import DeviceArray, DeviceKV, HostApi
from runtime.decode import speculative_generate
from runtime.manifest import Manifest
from runtime.ort_draft import OrtDraftRunner
from runtime.ort_target import OrtTargetRunner
from runtime.runner import Prompt
from runtime.session import tree_from_manifest
from runtime.trt_runner import TrtDraftRunner, TrtTargetRunner


def _runners(folder, **target_kwargs):
    manifest = Manifest.load(folder)
    api = HostApi()
    target = TrtTargetRunner(manifest, api=api, graphs=fake_graphs(manifest, ("decoder", "vision"), api),
                             **target_kwargs)
    draft = TrtDraftRunner(manifest, target.embeddings, api=api,
                           graphs=fake_graphs(manifest, ("draft_step", "draft_memory"), api))
    return manifest, target, draft


@pytest.mark.parametrize("stage_kv", [False, True])
def test_trt_runners_match_ort(exported_tiny, stage_kv) -> None:
    folder, _ = exported_tiny
    manifest, target, draft = _runners(folder, stage_kv=stage_kv, past_bucket=8)
    ort_target = OrtTargetRunner(manifest, threads=1)
    ort_draft = OrtDraftRunner(manifest, ort_target.embeddings, threads=1)
    tree = tree_from_manifest(manifest["tree"])
    ids = np.random.default_rng(0).integers(5, target.vocab_size - 5, 11)
    want = speculative_generate(ort_target, ort_draft, Prompt(ids), tree, max_new_tokens=20)
    got = speculative_generate(target, draft, Prompt(ids), tree, max_new_tokens=20)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert got.metrics.accept_counts == want.metrics.accept_counts
    # the committed caches agree slot by slot (compaction happened on the "device")
    n = target.length
    assert n == ort_target.length
    k = target.cache.k.read((target.cache.layers, target.cache.slots, target.cache.heads, target.cache.dim))
    np.testing.assert_allclose(k[:, :n], ort_target.cache.k.array[:, :n], atol=1e-5)


def test_bindings_are_set_only_on_change(exported_tiny) -> None:
    folder, _ = exported_tiny
    _, target, _ = _runners(folder)
    target.prefill(Prompt(np.arange(5, 12)))
    binds = target.decoder.bindings[1]  # the verify profile
    mask = np.tril(np.ones((3, 3), dtype=bool))
    target.verify(np.array([5, 6, 7]), target.length + np.arange(3), mask)
    first = binds.calls
    target.verify(np.array([5, 6, 7]), target.length + np.arange(3), mask)  # same length: nothing changes
    assert binds.calls == first
    target.commit(np.array([0]))
    target.verify(np.array([5, 6, 7]), target.length + np.arange(3), mask)
    layers = target.cache.layers
    # past grew by one: the mask and past K/V shapes (1 + 2L) and the present addresses (2L) change
    assert binds.calls - first == (1 + 2 * layers) + 2 * layers


def test_staged_verify_keeps_addresses_within_a_bucket(exported_tiny) -> None:
    folder, _ = exported_tiny
    _, target, _ = _runners(folder, stage_kv=True, past_bucket=16)
    target.prefill(Prompt(np.arange(5, 10)))  # past 5 -> bucket 16
    binds = target.decoder.bindings[1]
    mask = np.tril(np.ones((2, 2), dtype=bool))
    target.verify(np.array([5, 6]), target.length + np.arange(2), mask)
    first = binds.calls
    for _ in range(3):
        target.commit(np.array([0]))
        target.verify(np.array([5, 6]), target.length + np.arange(2), mask)
    assert binds.calls == first  # still inside the bucket: no shape or address changed


def test_device_kv_compaction() -> None:
    api = HostApi()
    kv = DeviceKV(api, layers=2, slots=8, heads=1, dim=2)
    values = np.arange(2 * 8 * 2, dtype=np.float32).reshape(2, 8, 1, 2)
    kv.k.write(values)
    kv.v.write(-values)
    kv.length = 2
    kv.commit([0, 2, 5], prev_len=2)  # slots 2, 4, 7 -> 2, 3, 4
    k = kv.k.read((2, 8, 1, 2))
    np.testing.assert_array_equal(k[:, 2:5], values[:, [2, 4, 7]])
    np.testing.assert_array_equal(kv.v.read((2, 8, 1, 2))[:, 2:5], -values[:, [2, 4, 7]])
    assert kv.length == 5 and kv.copies == 4  # two moved nodes, K and V each, every layer at once


def test_device_array_refuses_an_overrun() -> None:
    from runtime.errors import EngineError

    buf = DeviceArray(HostApi(), (4,))
    with pytest.raises(EngineError, match="overruns"):
        buf.write(np.zeros(5, dtype=np.float32))


@pytest.mark.gpu
def test_trt_engines_match_ort_on_gpu(exported_tiny, tmp_path) -> None:
    """On a GPU: build fp16 engines for the tiny export and decode the same greedy tokens as ORT."""
    import shutil

    from export.trt_build import EngineBuildConfig, build_engines

    folder = tmp_path / "art"
    shutil.copytree(exported_tiny[0], folder)
    build_engines(EngineBuildConfig(artifacts=folder, precision="fp16", workspace_mb=512))
    manifest = Manifest.load(folder)
    target = TrtTargetRunner(manifest, cuda_graphs=True)
    draft = TrtDraftRunner(manifest, target.embeddings)
    ort_target = OrtTargetRunner(manifest, threads=1)
    tree = tree_from_manifest(manifest["tree"])
    ids = np.arange(5, 16)
    from runtime.decode import autoregressive_generate

    want = autoregressive_generate(ort_target, Prompt(ids), max_new_tokens=12)
    got = speculative_generate(target, draft, Prompt(ids), tree, max_new_tokens=12)
    n = min(got.tokens.size, want.tokens.size)
    assert n and (got.tokens[:n] == want.tokens[:n]).mean() > 0.8  # fp16 may flip a near-tie late
