"""Tiny random-weight VLMs, one per family, saved as local HF folders (shared by all tests).

Each folder holds a config-built model (hidden 64, 2-4 layers, tiny vision tower, vocab ~100), a
character-level tokenizer built with `tokenizers` carrying the family's special tokens, the family's
PIL image processor and a minimal chat template with the family's layout. Where the HF processor
class needs torchvision (Pixtral, Qwen), only the tokenizer and image processor are saved, as the
adapter's PromptKit reads them.
"""

from __future__ import annotations

import json

import torch
import transformers as hf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers


def make_tokenizer(specials, bos, eos, pad, extra=None, chat_template=None):
    """A character-level WordLevel tokenizer: printable ASCII and newline, plus special tokens."""
    vocab: dict[str, int] = {}
    for token in ["<unk>", *specials, *[chr(i) for i in range(32, 127)], "\n"]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ["<unk>", *specials]])
    kwargs = dict(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=pad)
    if extra:
        kwargs["extra_special_tokens"] = extra
    fast = hf.PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _text(vocab, **extra):
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=512,
        **extra,
    )


def _smolvlm():
    specials = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
    specials += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    template = (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    tok = make_tokenizer(specials, "<|im_start|>", "<end_of_utterance>", "<end_of_utterance>")
    images = hf.Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = hf.Idefics3Processor(
        image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=template
    )
    config = hf.Idefics3Config(
        text_config=dict(model_type="llama", **_text(len(tok)), tie_word_embeddings=True),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    return hf.Idefics3ForConditionalGeneration(config), [processor]


def _llava():
    template = (
        "{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    tok = make_tokenizer(["<s>", "</s>", "<image>", "<pad>"], "<s>", "</s>", "<pad>")
    images = hf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = hf.LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    config = hf.LlavaConfig(
        text_config=dict(model_type="llama", **_text(len(tok))),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return hf.LlavaForConditionalGeneration(config), [processor]


def _pixtral():
    template = (
        "<s>{% for m in messages %}[INST]{% for c in m['content'] %}{% if c['type'] == 'image' %}[IMG]"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}[/INST]{% endfor %}"
    )
    specials = ["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = make_tokenizer(specials, "<s>", "</s>", "<pad>", chat_template=template)
    images = hf.PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8)
    vision = dict(
        model_type="pixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        head_dim=16,
    )
    config = hf.LlavaConfig(
        # A sliding window shorter than the prompt, so the Mistral window rule is exercised.
        text_config=dict(model_type="mistral", sliding_window=12, head_dim=16, **_text(len(tok))),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
    )
    return hf.LlavaForConditionalGeneration(config), [tok, images]


def _gemma3():
    template = (
        "<bos>{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    specials = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    specials += ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    extra = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = make_tokenizer(specials, "<bos>", "<eos>", "<pad>", extra=extra)
    images = hf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = hf.Gemma3Processor(
        image_processor=images, tokenizer=tok, image_seq_length=4, chat_template=template
    )
    text = _text(len(tok), head_dim=16, sliding_window=8)
    text.update(num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    config = hf.Gemma3Config(
        text_config=text,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        mm_tokens_per_image=4,
        image_token_id=tok.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_id=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_id=tok.convert_tokens_to_ids("<end_of_image>"),
    )
    return hf.Gemma3ForConditionalGeneration(config), [processor]


def _qwen(family):
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    tok = make_tokenizer(specials, None, "<|im_end|>", "<|endoftext|>", chat_template=template)
    images = hf.Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=32 * 32
    )
    names = dict(
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )
    ids = {key: tok.convert_tokens_to_ids(value) for key, value in names.items()}
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    text = _text(len(tok), rope_parameters=rope, bos_token_id=None, eos_token_id=eos)
    vision = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        config = hf.Qwen2VLConfig(
            text_config=text, vision_config=dict(embed_dim=32, hidden_size=64, **vision), **ids
        )
        return hf.Qwen2VLForConditionalGeneration(config), [tok, images]
    vision.update(
        hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1]
    )
    config = hf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return hf.Qwen2_5_VLForConditionalGeneration(config), [tok, images]


BUILDERS = {
    "smolvlm": _smolvlm,
    "llava": _llava,
    "pixtral": _pixtral,
    "gemma3": _gemma3,
    "qwen2_vl": lambda: _qwen("qwen2_vl"),
    "qwen2_5_vl": lambda: _qwen("qwen2_5_vl"),
}


# processor_config.json of the families saved without their HF processor (as real folders have it).
PROCESSOR_CONFIGS = {
    "pixtral": {"processor_class": "PixtralProcessor", "patch_size": 8, "spatial_merge_size": 1},
    "qwen2_vl": {"processor_class": "Qwen2VLProcessor"},
    "qwen2_5_vl": {"processor_class": "Qwen2_5_VLProcessor"},
}


def save_tiny_vlm(family: str, folder):
    """Builds the tiny model of `family` (seeded) and saves it with its processor parts into `folder`."""
    torch.manual_seed(0)
    model, parts = BUILDERS[family]()
    model.save_pretrained(folder)
    for part in parts:
        part.save_pretrained(folder)
    if family in PROCESSOR_CONFIGS:
        (folder / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIGS[family]))
    return folder
