"""The eval JSON has trained and untrained accuracy per question type, and a chart."""

import json

from dream_s_edge.data import QUESTION_TYPES
from dream_s_edge.vision_training import EvalConfig, VisionTrainConfig, evaluate_target, train_vision


def test_eval_json_structure(tiny_target, tmp_path):
    weights = train_vision(
        VisionTrainConfig(
            out_dir=str(tmp_path / "t"),
            model_dir=str(tiny_target),
            probe_steps=1,
            probe_batch=2,
            lm_steps=1,
            batch_size=2,
            val_size=2,
            device="cpu",
        )  # fmt: skip
    )
    cfg = EvalConfig(out_dir=str(tmp_path / "e"), model_dir=str(tiny_target), weights=str(weights), per_type=2,
                     batch_size=5, max_new_tokens=2, swap_pairs=2, photos=False, device="cpu")  # fmt: skip
    result = evaluate_target(cfg)
    on_disk = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert (tmp_path / "e" / "eval.png").stat().st_size > 0
    for label in ("trained", "untrained"):
        assert set(result[label]["per_type"]) == set(QUESTION_TYPES)
        assert 0.0 <= result[label]["overall"] <= 1.0
        assert len(result[label]["predictions"]) == 2 * len(QUESTION_TYPES)
    assert [q["type"] for q in result["questions"]].count("word") == 2
    assert set(result["swap"]) >= {"pairs", "follows_image"}
