# Set-up and the two main commands. Everything installs into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
FEATCACHE := $(VENV)/bin/featcache
# CPU wheels and KerasHub by default (hub: the full tensorflow wheel, which keras-hub's tensorflow-text
# needs, and xgboost-cpu); EXTRAS=gpu-hub,test installs the CUDA builds instead. The tests also run a
# subset under Keras' JAX backend (the jax extra, a CPU wheel here).
EXTRAS ?= hub,jax,test,dask

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

# The main job end to end on data that ships with scikit-learn (see `featcache demo --help`):
# extract features of the 8x8 digits, fit every head in 6-fold CV plus the test split, report.
demo: install
	$(FEATCACHE) demo

test: install
	$(PY) -m pytest -q
	KERAS_BACKEND=jax $(PY) -m pytest -q -m backends
