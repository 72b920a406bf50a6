# Each target creates .venv and (re)installs the project only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UI_PORT ?= 5000
SERVER_PORT ?= 5001
SLURM_LOCAL_DIR ?= /tmp/lenet-sweep-slurm
TEAM_HOST ?= 127.0.0.1
TEAM_PORT ?= 5002
DASHBOARD_PORT ?= 5003
OPTUNA_STORAGE ?= sqlite:///$(CURDIR)/outputs/optuna.db

.PHONY: sweep writeup test test-fast lint report ui ui-screenshot mlflow-server bench stress
.PHONY: slurm-start slurm-stop slurm-status clean
.PHONY: postgres-start postgres-stop postgres-status mlflow-server-team
.PHONY: optuna-dashboard

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat: the checkout itself goes on sys.path, so Hydra finds the plugins in its hydra_plugins/ namespace
	# (the default editable finder hides namespace packages from the pkgutil walk Hydra discovers plugins with).
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

## The main job: the writeup's grid, 15 epochs on the full MNIST, into outputs/mlflow.db.
## Two single-threaded jobs at a time: on 2 cores that beats one job on both (README, Performance).
sweep: $(STAMP)
	$(BIN)/python -m lenet_sweep -m model=lenet,mlp,lenet_reg aug=none,flip hydra/launcher=joblib hydra.launcher.n_jobs=2

## The test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

## ruff (settings in pyproject.toml): lint and format check; CI runs it before the tests. `ruff format .` fixes format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The tests not marked slow (no CLI subprocess, server, SLURM or browser): under two minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

## Compare the runs in outputs/mlflow.db: table on stdout; figures and report.md in outputs/report/.
report: $(STAMP)
	$(BIN)/python -m lenet_sweep.report $(REPORT_ARGS)

## The writeup's full study: its four experiments x 3 seeds, 15 epochs (12 runs).
writeup: $(STAMP)
	$(BIN)/python -m lenet_sweep -m experiment=writeup

## The MLflow UI over the project's store, on loopback.
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

## The studies of hydra/sweeper=optuna (its default storage; OPTUNA_STORAGE=<url> for another) in optuna-dashboard,
## on loopback (docs/search.md).
optuna-dashboard: $(STAMP)
	$(BIN)/optuna-dashboard $(OPTUNA_STORAGE) --host 127.0.0.1 --port $(DASHBOARD_PORT)

## The README's screenshot (docs/mlflow-compare.png): the runs' test_acc in the MLflow UI; needs chromium.
## SHOT_ARGS='--group-by-tag config_group': the Chart view, seeds grouped (docs/mlflow-seeds-grouped.png).
ui-screenshot: $(STAMP)
	$(BIN)/python -m scripts.ui_screenshot --store sqlite:///$(CURDIR)/outputs/mlflow.db $(SHOT_ARGS)

## A shared tracking server on loopback: jobs log to it with mlflow.tracking_uri=http://127.0.0.1:$(SERVER_PORT).
mlflow-server: $(STAMP)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
		--artifacts-destination $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(SERVER_PORT)

## Seconds per epoch: the writeup's pipeline vs torchvision's vs this project's loop; then the runner's
## start-up and per-epoch bookkeeping read back from MLflow (outputs/bench/).
bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/packed_cpu.py
	if $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then $(BIN)/python benchmarks/packed_gpu.py && $(BIN)/python benchmarks/packed_gpu_cli.py; fi

## N tiny parallel jobs against SQLite, a server on SQLite and the team server on PostgreSQL (also restarted
## mid-sweep): runs and metric points expected vs found (docs/reliability.md). Needs the package postgresql.
stress: $(STAMP)
	$(BIN)/python -m benchmarks.stress_tracking

## The team setup (docs/team.md): a local PostgreSQL (eval "$$(make -s postgres-start | grep ^export)"), and the
## tracking server on it behind MLflow's login; jobs: set -a; . outputs/team-server/jobs.env; set +a.
## TEAM_HOST=0.0.0.0 serves other hosts: TLS in front first, and TEAM_ARGS='--allowed-hosts ...' (docs/team.md).
postgres-start:
	@scripts/postgres-local.sh start
postgres-stop:
	scripts/postgres-local.sh stop
postgres-status:
	@scripts/postgres-local.sh status
mlflow-server-team: $(STAMP)
	$(BIN)/python -m scripts.mlflow_team_server --host $(TEAM_HOST) --port $(TEAM_PORT) $(TEAM_ARGS)

## A one-node SLURM cluster on loopback (root; needs the packages slurm-wlm and munge).
slurm-start:
	scripts/slurm-local.sh start
slurm-stop:
	scripts/slurm-local.sh stop
slurm-status:
	scripts/slurm-local.sh status

clean:
	rm -rf outputs/runs outputs/multirun outputs/bench outputs/report
