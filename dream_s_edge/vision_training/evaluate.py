"""`evaluate_target`: exact-match accuracy per question type on the test split, trained vs untrained.

Questions go through the target's real inference path (chat template, processor, greedy `generate`),
so the score is what a user gets. The same questions are asked with the trained tower and with the
untrained (seeded) one. Two checks ride along: an image swap (ask image A's question about image B:
does the answer follow the image?) and free answers on scikit-image photos (fluency only, no score).
Writes eval.json and a bar chart eval.png into out_dir.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from dream_s_edge.data import QUESTION_TYPES, eval_sample
from dream_s_edge.vision_training.config import EvalConfig
from dream_s_edge.vision_training.model import load_target, load_trained, target_init_seed, untrained_state
from dream_s_edge.vision_training.sequences import chat_text
from dream_s_edge.vision_training.trainer import pick_device
from runtime.errors import ModelLoadError

logger = logging.getLogger(__name__)

PHOTO_QUESTIONS = ("What is in this image?", "What colour is it?")


def normalise(text: str) -> str:
    """Answer normalisation for exact match: lower case, trimmed, no final full stop."""
    return text.strip().lower().rstrip(".").strip()


@torch.no_grad()
def answer(model, processor, images: list, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of the target to one question per image, batched with left padding."""
    texts = [chat_text(processor, q) for q in questions]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)


def score(model, processor, samples, config: EvalConfig, label: str) -> dict:
    """Exact match per question type and overall, with every prediction."""
    predictions = []
    for start in tqdm(range(0, len(samples), config.batch_size), desc=f"eval {label}", leave=False):
        chunk = samples[start : start + config.batch_size]
        replies = answer(
            model,
            processor,
            [s.image for s in chunk],
            [s.questions[0].question for s in chunk],
            config.max_new_tokens,
        )
        predictions += [normalise(r) for r in replies]
    per_type = {t: [] for t in QUESTION_TYPES}
    for s, p in zip(samples, predictions, strict=True):
        per_type[s.questions[0].qtype].append(p == s.questions[0].answer)
    accuracy = {t: sum(v) / max(1, len(v)) for t, v in per_type.items()}
    overall = sum(sum(v) for v in per_type.values()) / max(1, len(samples))
    return {"overall": overall, "per_type": accuracy, "predictions": predictions}


def swap_check(model, processor, samples, config: EvalConfig) -> dict:
    """Asks each question about its own image and about another image whose right answer differs;
    counts how often both answers are right (the answer follows the image)."""
    pairs = []
    for i, a in enumerate(samples):
        for b in samples[i + 1 :]:
            qa, qb = a.questions[0], b.questions[0]
            if qa.qtype == qb.qtype and qa.question == qb.question and qa.answer != qb.answer:
                pairs.append((a, b))
                break
        if len(pairs) == config.swap_pairs:
            break
    if not pairs:
        return {"pairs": 0, "follows_image": 0.0}
    images = [p[0].image for p in pairs] + [p[1].image for p in pairs]
    questions = [p[0].questions[0].question for p in pairs] * 2
    replies = [normalise(r) for r in answer(model, processor, images, questions, config.max_new_tokens)]
    n = len(pairs)
    follows = [
        replies[i] == pairs[i][0].questions[0].answer and replies[n + i] == pairs[i][1].questions[0].answer
        for i in range(n)
    ]
    return {
        "pairs": n,
        "follows_image": sum(follows) / n,
        "answers": [[replies[i], replies[n + i]] for i in range(n)],
    }


def photo_answers(model, processor, config: EvalConfig) -> list[dict]:
    """Free answers on scikit-image photos: the language model must stay fluent (no score)."""
    try:
        from skimage import data as photos
    except ImportError:
        logger.warning("scikit-image is not installed: skipping the photo answers")
        return []
    from PIL import Image

    images = {
        name: Image.fromarray(getattr(photos, name)()).convert("RGB")
        for name in ("astronaut", "coffee", "chelsea")
    }
    out = []
    for name, image in images.items():
        for q in PHOTO_QUESTIONS:
            reply = answer(model, processor, [image], [q], max_new_tokens=24)[0]
            out.append({"photo": name, "question": q, "answer": reply.strip()})
    return out


def _trained_tensors(config: EvalConfig) -> dict[str, torch.Tensor]:
    from dream_s_edge.embedded.build import VISION_ASSET

    path = Path(config.weights) if config.weights else VISION_ASSET
    if not path.exists():
        raise ModelLoadError(
            f"No trained vision weights at {path}.",
            hint="train them first with `dream-s-edge target train-vision`",
        )
    return load_file(str(path))


def plot(result: dict, path: Path) -> None:
    """A small grouped bar chart: accuracy per type and overall, trained vs untrained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*QUESTION_TYPES, "overall"]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    for offset, label in ((-0.2, "untrained"), (0.2, "trained")):
        values = [result[label]["per_type"][n] for n in QUESTION_TYPES] + [result[label]["overall"]]
        ax.bar([i + offset for i in range(len(names))], values, width=0.4, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_target(config: EvalConfig) -> dict:
    """Scores the target's vision on the test split, trained tower vs untrained tower.

    Args:
        config: what to evaluate and where to write; see EvalConfig.

    Returns:
        {"per_type_count", "trained": {"overall", "per_type", "predictions"}, "untrained": {...},
        "swap": {...}, "photos": [...], "questions": [...]}; also written to out_dir/eval.json, with
        the chart in out_dir/eval.png.

    Raises:
        ModelLoadError: no trained weights exist at config.weights (or in the package).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    model, processor, folder = load_target(config.model_dir, pick_device(config.device))
    image_size = model.config.vision_config.image_size
    samples = [eval_sample("test", i, image_size) for i in range(config.per_type * len(QUESTION_TYPES))]
    result: dict = {"per_type_count": config.per_type}
    result["questions"] = [
        {"type": s.questions[0].qtype, "question": s.questions[0].question, "answer": s.questions[0].answer}
        for s in samples
    ]
    load_trained(model, untrained_state(model, target_init_seed(folder, config.init_seed)))
    result["untrained"] = score(model, processor, samples, config, "untrained")
    load_trained(model, {k: v.to(model.device) for k, v in _trained_tensors(config).items()})
    result["trained"] = score(model, processor, samples, config, "trained")
    result["swap"] = swap_check(model, processor, samples, config) if config.swap_pairs else {}
    result["photos"] = photo_answers(model, processor, config) if config.photos else []
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "eval.png")
    return result
