"""Token sequences for training: the target's own chat format, split into a constant prefix and a
per-sample part, with labels on the answer tokens only.

A single-turn sample is exactly what the processor makes from the chat template::

    [prefix: system turn, "<|im_start|>user\n", <fake_token_around_image>, <global-img>]   (cached)
    [image block: <image> x Tv, <fake_token_around_image>] question <|im_end|>\n<|im_start|>assistant\n
    answer <|im_end|>

Training packs several question/answer turns after one image (multi-turn chat), so one forward through
the frozen language model scores several answers. Labels mark the answer tokens and the `<|im_end|>`
that closes each answer (so the model learns to stop); everything else is -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IGNORE = -100  # label of positions that carry no loss


@dataclass(frozen=True)
class ChatLayout:
    """The constant token pieces of the target's chat format."""

    prefix: tuple[int, ...]  # everything before the first <image> token; identical for every sample
    image_block: tuple[int, ...]  # <image> x Tv and the closing <fake_token_around_image>
    end_of_turn: int  # <|im_end|>
    pad: int


def chat_layout(processor) -> ChatLayout:
    """Reads the prefix and image block from what the processor makes of a one-question chat."""
    text = chat_text(processor, "Q")
    ids = processor(text=[text], images=[[Image.new("RGB", (32, 32))]], return_tensors="pt")["input_ids"][0]
    ids = ids.tolist()
    image_id = processor.image_token_id
    first = ids.index(image_id)
    last = len(ids) - 1 - ids[::-1].index(image_id)
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    return ChatLayout(tuple(ids[:first]), tuple(ids[first : last + 2]), end, pad)


def chat_text(processor, question: str) -> str:
    """The chat-template text of a one-image, one-question user turn, ready for generation."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode_turns(layout: ChatLayout, tokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Encodes the per-sample part of a chat with one image and several (question, answer) turns.

    Returns:
        (input_ids, labels), both of length T; labels[t] is the token to predict after input_ids[t],
        or IGNORE. The sequence ends at the last answer token: its closing <|im_end|> is a label only.
    """
    ids, target = list(layout.image_block), [False] * len(layout.image_block)
    for i, (question, answer) in enumerate(turns):
        opener = "" if i == 0 else "\n<|im_start|>user\n"
        prompt = _tokens(tokenizer, f"{opener}{question}<|im_end|>\n<|im_start|>assistant\n")
        reply = _tokens(tokenizer, answer) + [layout.end_of_turn]
        ids += prompt + reply
        target += [False] * len(prompt) + [True] * len(reply)
    labels = [ids[t + 1] if target[t + 1] else IGNORE for t in range(len(ids) - 1)]
    return ids[:-1], labels


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def collate(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads encoded rows into `input_ids [B, T]` and `labels [B, T]`.

    Right padding needs no attention mask here: attention is causal, so a real token never sees a pad.
    """
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
    return input_ids, labels


def pixel_values(images: list[Image.Image], image_size: int) -> torch.Tensor:
    """SigLIP-normalised pixels, as the target's processor makes them for square images."""  # [B, 3, H, W]
    arrays = []
    for image in images:
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0
