# Each target creates .venv and (re)installs the project only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UI_PORT ?= 5000

.PHONY: sweep test ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job: the writeup's grid, 15 epochs on the full MNIST, into outputs/mlflow.db.
sweep: $(STAMP)
	$(BIN)/python -m lenet_sweep -m model=lenet,mlp,lenet_reg aug=none,flip

## The test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest

## The MLflow UI over the project's store, on loopback.
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf outputs/runs outputs/multirun
