# The README's commands. Each builds what it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SERVICE_VENV := .venv-service
# Exactly this torch: it resolves to the local CPU wheel. It goes in first so that nothing
# later pulls a CUDA build.
TORCH := torch==2.13.0

.PHONY: test lint serve model compare bench examples clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[train,service,dev]'
	touch $@

# The service venv has no torch: the same install as the Docker image.
$(SERVICE_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(SERVICE_VENV)
	$(SERVICE_VENV)/bin/pip install -q -c constraints.txt -e '.[service]'
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest -q

serve: $(SERVICE_VENV)/.installed
	$(SERVICE_VENV)/bin/opengallery serve --host 127.0.0.1 --port 8000 --data-dir ./var --model models/default

# The shipped bundle, reproducibly: a fixed seed, deterministic kernels, one thread
# (configs/default.yaml). A few minutes on 2 cores (docs/benchmarks.md).
model: $(VENV)/.installed
	rm -rf runs/default
	$(VENV)/bin/opengallery train --config configs/default.yaml --out runs/default --no-progress
	$(VENV)/bin/opengallery export runs/default --out models/default --name opengallery-mnist5k --version 2 --overwrite

# Every loss over 3 seeds -> docs/results.md (mnist5k) and docs/results_glyphs.md (glyphs,
# open world), cached under runs/compare; reruns resume.
compare: $(VENV)/.installed
	$(VENV)/bin/opengallery compare
	$(VENV)/bin/opengallery compare --config configs/compare-glyphs.yaml \
		--results docs/results_glyphs.md --plot docs/results_glyphs_dir_fpir.png

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/losses.py
	$(VENV)/bin/python bench/training.py
	$(VENV)/bin/python bench/service.py --model models/default
	$(VENV)/bin/python bench/batching.py --model models/default

examples: $(VENV)/.installed
	$(VENV)/bin/python examples/make_examples.py

clean:
	rm -rf $(VENV) $(SERVICE_VENV) .pytest_cache .ruff_cache
