"""Token embedding on the host, shared by the onnxruntime and TensorRT target runners.

The runtime embeds tokens itself from the exported table (no torch), and splices the vision
encoder's output in at the image-token positions, as the PyTorch adapters do.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import PromptError


def lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Token embeddings [T, H] float32 from table [V, H]; ids outside it map to row 0 (as the adapter does)."""
    safe = np.where(ids < table.shape[0], ids, 0)
    return np.asarray(table[safe], dtype=np.float32)


def image_slots(ids: np.ndarray, image_token_id: int | None) -> np.ndarray:
    """[S] positions of the image tokens in ids [T] (empty for a text-only model)."""
    if image_token_id is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(ids == image_token_id)


def splice_images(embeds: np.ndarray, slots: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Writes image embeddings [I, N_img, H] into embeds [T, H] at `slots`; returns embeds.

    Raises:
        PromptError: the prompt's image-token count differs from the number of image embeddings.
    """
    image = image.reshape(-1, embeds.shape[1])  # [I * N_img, H]
    if image.shape[0] != slots.size:
        raise PromptError("The prompt's image tokens do not match the image embeddings.",
                          note=f"{slots.size} image tokens, {image.shape[0]} embeddings")
    embeds[slots] = image
    return embeds


def embed_prompt(table: np.ndarray, ids: np.ndarray, image_token_id: int | None, pixel_values, encode,
                 where: str) -> np.ndarray:
    """Token embeddings [T, H] with the image embeddings spliced in at the image tokens.

    Args:
        table: [V, H] the exported embedding table.
        ids: [T] prompt token ids.
        image_token_id: the <image> token, or None.
        pixel_values: the preprocessed image, or None for a text prompt.
        encode: pixel values -> image embeddings [n_images * Tv, H], or None without a vision graph.
        where: what holds the graphs ("artifacts", "engines"), for the error message.
    """
    embeds = lookup(table, ids)
    slots = image_slots(ids, image_token_id)
    if pixel_values is None:
        if slots.size:
            raise PromptError("The prompt has image tokens but no image.", note=f"{slots.size} image tokens")
        return embeds
    if encode is None:
        raise PromptError(f"These {where} have no vision graph.", hint="ask without an image")
    return splice_images(embeds, slots, encode(np.asarray(pixel_values, dtype=np.float32)))
