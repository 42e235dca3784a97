# Two entry points (see README): `make reproduce` runs the study, `make test` checks it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: reproduce test unit nbval bench notebooks lab clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,deploy]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) scripts/reproduce.py

test: unit nbval

# two workers: most unit tests run on one thread (the one_thread fixture), so the two cores share them
unit: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -n 2 tests -q

nbval: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q

# Re-execute the committed notebooks in place (quick profile) so their stored outputs match the code.
notebooks: $(STAMP)
	$(PY) scripts/refresh_notebooks.py

# Open the chapters in JupyterLab with the project's environment (kernel "Python (gmlib)").
lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name gmlib --display-name "Python (gmlib)"
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m pip install -e '.[bench]'
	$(PY) benchmarks/bench_median.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_zoo.py

clean:
	rm -rf results .pytest_cache .hypothesis
