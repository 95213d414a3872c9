"""Two CPU processes under torchrun with the gloo backend train one draft and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_two_process_gloo_run(tiny_data_dir, tiny_target_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dream_s_edge.distill", "--data", str(tiny_data_dir), "--out", str(out),
           "--model", str(tiny_target_dir), "--steps", "4", "--save-every", "2", "--warmup", "1",
           "--ttt-steps", "1", "--val-prompts", "1", "--val-max-new-tokens", "4", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "draft" / "config.json").read_text())["distillation"]
    assert record["world_size"] == 2
    digests = record["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both processes hold the same weights
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
