"""A tiny random Idefics3 target (64-px images, 16 visual tokens, 2-layer text model) with the embedded
target's tokenizer and chat template, so training tests run in seconds."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory, default_target_dir):
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )

    from dream_s_edge.embedded.build import CHAT_TEMPLATE, EmbeddedVisionSpec, _image_processor

    tokenizer = AutoTokenizer.from_pretrained(default_target_dir)
    vision = EmbeddedVisionSpec(
        image_size=64, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2
    )
    processor = Idefics3Processor(
        image_processor=_image_processor(vision),
        tokenizer=tokenizer,
        image_seq_len=16,
        chat_template=CHAT_TEMPLATE,
    )
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)  # fmt: skip
    config = Idefics3Config(
        text_config=text,
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
        ),
        scale_factor=2,
        image_token_id=processor.image_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    folder = tmp_path_factory.mktemp("tiny-idefics3")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
