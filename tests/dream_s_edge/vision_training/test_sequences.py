"""Sequences match the processor's chat format; labels cover the answer tokens only; the cached prefix
changes nothing."""

import torch
from transformers import AutoProcessor

from dream_s_edge.data import make_sample
from dream_s_edge.vision_training.model import VisionQA, load_target
from dream_s_edge.vision_training.sequences import (
    IGNORE,
    chat_layout,
    chat_text,
    collate,
    encode_turns,
    pixel_values,
)


def _processor_ids(processor, messages):
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    image = make_sample("train", 0, 64).image
    return processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"][0].tolist()


def test_multi_turn_matches_chat_template_and_labels_only_answers(tiny_target):
    processor = AutoProcessor.from_pretrained(tiny_target)
    layout = chat_layout(processor)
    turns = [("What colour is the star?", "red"), ("Where is the red star?", "top left")]
    ids, labels = encode_turns(layout, processor.tokenizer, turns)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": turns[1][0]}]},
        {"role": "assistant", "content": [{"type": "text", "text": "top left"}]},
    ]
    full = _processor_ids(processor, messages)
    assert list(layout.prefix) + ids == full[: len(layout.prefix) + len(ids)]
    tok = processor.tokenizer
    labelled = [t for t in labels if t != IGNORE]
    end = layout.end_of_turn
    expected = (
        tok("red", add_special_tokens=False)["input_ids"]
        + [end]
        + tok("top left", add_special_tokens=False)["input_ids"]
        + [end]
    )
    assert labelled == expected
    # Every label is the next input token, and it sits right after "assistant\n".
    for t, lab in enumerate(labels[:-1]):
        if lab != IGNORE:
            assert ids[t + 1] == lab


def test_single_turn_prompt_is_the_generation_prompt(tiny_target):
    processor = AutoProcessor.from_pretrained(tiny_target)
    layout = chat_layout(processor)
    ids, labels = encode_turns(layout, processor.tokenizer, [("How many shapes are there?", "3")])
    image = make_sample("train", 0, 64).image
    gen = processor(
        text=[chat_text(processor, "How many shapes are there?")], images=[[image]], return_tensors="pt"
    )
    prompt = gen["input_ids"][0].tolist()
    first_label = next(t for t, lab in enumerate(labels) if lab != IGNORE)
    assert list(layout.prefix) + ids[: first_label + 1] == prompt
    assert torch.allclose(gen["pixel_values"][0, 0], pixel_values([image], 64)[0], atol=1e-5)


def test_prefix_cache_equals_full_forward(tiny_target):
    model, processor, _ = load_target(str(tiny_target), torch.device("cpu"))
    layout = chat_layout(processor)
    vqa = VisionQA(model, layout.prefix, processor.image_token_id)
    rows = [encode_turns(layout, processor.tokenizer, [("Count the shapes.", "4")]),
            encode_turns(layout, processor.tokenizer, [("What word is written in the image?", "owl"), ("Count the shapes.", "2")])]  # fmt: skip
    input_ids, labels = collate(rows, layout.pad)
    images = [make_sample("train", i, 64).image for i in range(2)]
    pixels = pixel_values(images, 64)
    with torch.no_grad():
        _, logits, targets = vqa(pixels, input_ids, labels)
        prefix = torch.tensor([layout.prefix] * 2)
        full = model(input_ids=torch.cat([prefix, input_ids], 1), pixel_values=pixels[:, None]).logits
    picked = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), labels != IGNORE], 1)
    assert torch.allclose(logits, full[picked], atol=1e-4)
