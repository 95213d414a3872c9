"""The I/O contract: names, order, roles and dynamic axes come from one module."""

from export import contract


def test_kv_names() -> None:
    assert contract.kv_names(3) == ("past_key.3", "past_value.3", "present_key.3", "present_value.3")


def test_decoder_io_order_and_axes() -> None:
    inputs, outputs = contract.decoder_io(layers=2, hidden=8, heads=2, dim=4, vocab=11, feature_dim=16)
    assert contract.names(inputs) == [
        "inputs_embeds", "position_ids", "attention_mask", "past_key.0", "past_value.0", "past_key.1", "past_value.1"
    ]
    assert contract.names(outputs)[:2] == ["logits", "features"]
    assert [s.layer for s in outputs[2:]] == [0, 0, 1, 1]
    axes = contract.dynamic_axes(inputs + outputs)
    assert axes["past_key.1"] == {1: "past"}
    assert axes["attention_mask"] == {2: "new", 3: "past+new"}
    assert outputs[0].shape == (1, "rows", 11)  # logits of the last min(new, node_budget) tokens


def test_draft_io_depends_on_interaction() -> None:
    cross, cross_out = contract.draft_step_io(2, 8, 8, 1, 8, "cross_attention", top_k=3)
    concat, concat_out = contract.draft_step_io(2, 8, 8, 1, 8, "concat", top_k=3)
    none, none_out = contract.draft_step_io(1, 8, 8, 1, 8, "none", top_k=3)
    assert "memory_key" in contract.names(cross) and "previous" not in contract.names(cross)
    assert "previous" in contract.names(concat) and "memory_key" not in contract.names(concat)
    assert [t.role for t in cross_out[2:4]] == ["memory_out_key", "memory_out_value"]
    assert concat_out[2].name == "memory_out"
    assert contract.names(none_out) == ["topk_logprobs", "topk_ids", "present_key.0", "present_value.0"]
    assert cross_out[0].shape == ("head_rows", 3)  # top-k of the last min(new, head_rows) tokens
    assert cross_out[2].shape == (1, "head_rows", 1, 8) and cross_out[4].shape == (1, "new", 1, 8)


def test_graph_contract_is_json_ready() -> None:
    entry = contract.graph_contract(*contract.vision_io(32, 4, 64))
    assert entry["inputs"][0] == {
        "name": "pixel_values", "role": "pixel_values", "dtype": "float32", "shape": ["images", 3, 32, 32], "layer": None
    }
