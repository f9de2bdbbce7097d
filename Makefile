# Two commands set everything up on a fresh machine:
#   make repro   creates .venv, installs pinned dependencies, runs the whole DVC pipeline on the demo data
#   make test    creates .venv if needed, runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# dvc.yaml's commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: repro test test-fast bench real-cpu real-gpu real-cpu-cv ablation clean-venv chromium vendor-plots

REAL_DATA ?= ../shared/data/eyepacs-dev ../shared/data/odir-dev

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || (echo "drgrade: $(PYTHON) not found; install Python 3.11" >&2; exit 1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)
	@test -d .git || (echo "drgrade: not a git repository; clone the project with git" >&2; exit 1)
	$(BIN)/dvc repro

# A real-photo preset (presets/<target>.yaml, or PRESET=...) as the named DVC experiment `real-cpu` or
# `real-gpu`, run through the export stage with `dvc exp run --temp` in a copy of the workspace, so params.yaml,
# models/ and results/ stay as they were: real-cpu takes under 60 min on 2 CPU cores. Its model, results
# (model card included) and ONNX export are then copied to runs/<target>/ (`dvc get` from the experiment); `dvc exp show` lists it beside the others and
# `dvc exp apply real-cpu` would bring it into the workspace. A rerun on the same commit replaces it.
real-cpu real-gpu: $(STAMP)
	@for d in $(REAL_DATA); do test -f $$d/labels.csv || { echo "drgrade: $$d/labels.csv not found; edit data.sources in $(or $(PRESET),presets/$@.yaml)" >&2; exit 1; }; done
	set -e; ref=refs/exps/$$(git rev-parse HEAD | sed 's|^..|&/|')/$@; \
	if git show-ref -q --verify $$ref; then $(BIN)/dvc exp remove $$ref; fi; \
	overrides=$$($(BIN)/python -m dr_core.cli.presets $(or $(PRESET),presets/$@.yaml) --absolute); \
	$(BIN)/dvc exp run --temp --name $@ export $$overrides; \
	rm -rf runs/$@; \
	$(BIN)/dvc get . models/best_model.pth --rev $$ref -o runs/$@/best_model.pth; \
	$(BIN)/dvc get . results --rev $$ref -o runs/$@/results; \
	$(BIN)/dvc get . export --rev $$ref -o runs/$@/export; \
	echo "drgrade: experiment $@ ($$ref); its model and results in runs/$@/"

# The same preset cross-validated by cv/dvc.yaml: five patient-level folds, each photo tested once, the
# folds' predictions pooled into cv/metrics.json and cv/cv.md; five trainings, about 70 min on 2 CPU cores.
# `dvc exp run` because `dvc repro` takes no -S overrides; DVC 3.67 then needs the root pipeline's outputs
# named in dvc.lock in the local cache (its top-level plots are resolved): run `make repro` first on a fresh clone.
real-cpu-cv: $(STAMP)
	@for d in $(REAL_DATA); do test -f $$d/labels.csv || { echo "drgrade: $$d/labels.csv not found; edit data.sources in presets/real-cpu.yaml" >&2; exit 1; }; done
	$(BIN)/dvc exp run cv/dvc.yaml $$($(BIN)/python -m dr_core.cli.presets presets/real-cpu.yaml)

# The ablation table around the preset (research/ablation.py): queued DVC experiments, 3 seeds each.
ablation: $(STAMP)
	$(BIN)/python -m research.ablation all -j $(or $(JOBS),1) --out docs/ablation.md

# Headless Chromium for tests/test_plots_offline.py, installed with apt-get where that works (as root).
# Where it does not, the test skips and the run goes on.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "drgrade: chromium not installed; tests/test_plots_offline.py will skip" >&2

test: $(STAMP) chromium
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/freeze.py

# Fetch again the Vega builds that the `dvc plots show` page carries inline, at the versions in
# .dvc/plots/vendor/MANIFEST, refuse any whose sha256 differs, and rebuild .dvc/plots/page.html.
vendor-plots:
	@command -v npm >/dev/null || (echo "drgrade: npm not found; install Node.js and npm" >&2; exit 1)
	$(PYTHON) .dvc/plots/vendor.py fetch

clean-venv:
	rm -rf $(VENV)
