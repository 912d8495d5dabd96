# refine-bench developer entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch on these machines; any other spec can pull a multi-GB CUDA build. The package itself
# only asks for a range, so GPU users keep their CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup system-deps test test-all demo lint bench paper-tables small-models mini-paper mini-paper-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

# Debian packages: headless Chromium for the dashboard test (skipped with a reason where absent), and the Python
# documentation (python3-doc, PSF licence), the natural text of the small models' pretraining corpus.
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && ls /usr/share/info/python3*.info.gz >/dev/null 2>&1; } || \
		{ (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium python3-doc >/dev/null) \
		|| echo "note: could not install chromium/python3-doc; the browser test and corpus tests will be skipped"; }

test: setup system-deps
	$(BIN)/python -m pytest -q

# Everything, including checks marked slow (real-size shapes, benchmarks-as-tests).
test-all: setup system-deps
	$(BIN)/python -m pytest -q -m ""

# The main job on the shipped small DeltaNet: REFINE mid-training for 20 steps of 4 x 1,024 tokens on generated
# documents its pretraining never saw, then NIAH at 1K, 8 samples per task, beside the untrained model (a task x
# length table with the differences, and a heatmap in results/plots); run records land in results/runs.
demo: setup system-deps
	$(BIN)/refine-bench run --model deltanet-small --arm refine --data corpus-dense:1000 --steps 20 --batch-size 4 \
		--seq-len 1024 --lr 3e-5 --tasks niah --lengths 1024 --limit 8 --eval-batch-size 8 --compare-base

lint: setup
	$(BIN)/ruff check refine_bench tests scripts

bench: setup
	$(BIN)/refine-bench bench kernels --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The paper's Tables 3-5 (Markdown, LaTeX, CSV) and plots, measured runs beside the published numbers.
paper-tables: setup
	$(BIN)/refine-bench tables --runs-dir results/runs --out results/paper

# Pretrain the shipped small models (deltanet-small, lact-small) from their recipes in
# scripts/build_small_models.py and install them under refine_bench/models/assets/ (runs in results/small-models).
small-models: setup system-deps
	$(BIN)/python scripts/build_small_models.py

# The paper's mid-training comparison in miniature on the small models (base vs SFT vs REFINE, 3 seeds, NIAH at
# 1K/2K/4K): runs under results/mini-paper/runs, tables and plots in results/mini-paper. Resumes when re-run.
mini-paper: setup system-deps
	$(BIN)/refine-bench mini-paper --out results/mini-paper

# The same pipeline at CI size (2 seeds, a few steps, 4 NIAH tasks at 1K): checks the plumbing, not the science.
mini-paper-quick: setup system-deps
	$(BIN)/refine-bench mini-paper --quick --out results/mini-paper-quick
