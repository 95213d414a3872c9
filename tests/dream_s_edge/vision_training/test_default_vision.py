"""The shipped default target sees: answers on held-out scenes follow the image (an image swap), and
photographs still get English answers. Skipped when the package ships no trained vision asset."""

import pytest
import torch

from dream_s_edge.data import eval_sample
from dream_s_edge.embedded.build import VISION_ASSET
from dream_s_edge.vision_training.config import EvalConfig
from dream_s_edge.vision_training.evaluate import answer, normalise, swap_check

pytestmark = pytest.mark.skipif(not VISION_ASSET.exists(), reason="no trained vision asset in the package")


@pytest.fixture(scope="module")
def trained(default_target_dir):
    from dream_s_edge.vision_training.model import load_target

    model, processor, _ = load_target(str(default_target_dir), torch.device("cpu"))
    return model, processor


def test_answers_follow_swapped_images(trained):
    model, processor = trained
    # colour, count, shape, position and word questions of the test split, 20 of each type
    samples = [eval_sample("test", i) for i in range(100)]
    config = EvalConfig(swap_pairs=5, max_new_tokens=5, photos=False)
    swap = swap_check(model, processor, samples, config)
    assert swap["pairs"] == 5
    # the same question about two images with different right answers gets different answers ...
    assert all(a != b for a, b in swap["answers"])
    # ... and they are the right ones
    assert swap["follows_image"] >= 0.8, swap


def test_photographs_get_english_answers(trained):
    from PIL import Image
    from skimage import data as photos

    model, processor = trained
    image = Image.fromarray(photos.astronaut()).convert("RGB")
    reply = normalise(answer(model, processor, [image], ["What is in this image?"], max_new_tokens=16)[0])
    words = reply.split()
    assert len(words) >= 3 and sum(w.isalpha() for w in words) >= len(words) // 2, reply
