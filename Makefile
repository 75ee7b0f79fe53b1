# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup demo test protos bench clean

setup: $(STAMP)

# Re-run the install whenever the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/modalmesh demo

test: setup
	$(PY) -m pytest -q

protos: setup
	$(PY) tools/gen_protos.py

bench: setup
	$(PY) benchmarks/bench_text.py
	$(PY) benchmarks/bench_encoders.py

clean:
	rm -rf $(VENV) build *.egg-info
