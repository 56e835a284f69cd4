# Bootstraps its own virtual environment with pip (which honours this machine's torch cap).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# One worker a core, a test file a worker (module fixtures built once); most tests run one thread.
PYTEST_XDIST ?= -n auto --dist loadfile

.PHONY: install test test-all demo zoo bench bench-study pilot study figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -e '.[test,train,export]'
	touch $(STAMP)

# The oldest timm that pyproject.toml admits, in a second environment of its own timm that shares every other
# package with $(VENV) (a .pth file names $(VENV)'s site-packages): `make test` runs the core tests there too.
TIMM_OLDEST := $(shell sed -n 's/.*"timm>=\([0-9.]*\),.*/\1/p' pyproject.toml)
VENV_OLDEST ?= .venv-timm-oldest
PYTHON_OLDEST := $(VENV_OLDEST)/bin/python
STAMP_OLDEST := $(VENV_OLDEST)/.installed-timm-$(TIMM_OLDEST)

$(STAMP_OLDEST): $(STAMP)
	test -x $(PYTHON_OLDEST) || $(PY) -m venv $(VENV_OLDEST)
	$(PYTHON) -c "import sysconfig; print(sysconfig.get_path('purelib'))" \
		> "$$($(PYTHON_OLDEST) -c "import sysconfig; print(sysconfig.get_path('purelib'))")/timm_cada_shared.pth"
	$(PYTHON_OLDEST) -m pip install -q -e . 'timm==$(TIMM_OLDEST)'
	rm -f $(VENV_OLDEST)/.installed-timm-*
	touch $@

# The default run deselects tests marked slow; test-all runs everything. Both then run the core tests (marked
# core) against the oldest supported timm.
test: $(STAMP) $(STAMP_OLDEST)
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)
	TIMM_CADA_EXPECT_TIMM=$(TIMM_OLDEST) $(PYTHON_OLDEST) -m pytest -m "core and not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)

test-all: $(STAMP) $(STAMP_OLDEST)
	$(PYTHON) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)
	TIMM_CADA_EXPECT_TIMM=$(TIMM_OLDEST) $(PYTHON_OLDEST) -m pytest -m core $(PYTEST_XDIST) $(PYTEST_ARGS)

# The main job on an embedded default: scikit-learn's digits as an ImageFolder, a DW and a CADA resnet26
# trained by train/ablate.py, the comparison table printed. Finished runs in DEMO_OUT are reused, and
# interrupted ones resumed; delete DEMO_OUT to train again. OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads
# sleep instead of spinning, which keeps training fast when another process shares the 2 cores.
DEMO_DATA ?= .cache/digits
DEMO_OUT ?= output/demo
DEMO_MODELS ?= resnet26_dw_k7 resnet26_cada_k7
DEMO_ANALYSE ?= resnet26_cada_k7
DEMO_ERF ?= resnet26_dw_k7

# It ends by drawing what the trained DEMO_ANALYSE model applies (timm_cada.analysis) into DEMO_OUT/analysis, on
# the first validation image of four digits, with the trained DEMO_ERF model's receptive field beside it.
demo: $(STAMP)
	$(PYTHON) train/make_digits.py $(DEMO_DATA)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) train/ablate.py -c train/configs/digits.yaml --models $(DEMO_MODELS) --data-dir $(DEMO_DATA) --output $(DEMO_OUT)
	$(PYTHON) -m timm_cada.analysis --model $(DEMO_ANALYSE) --checkpoint $(DEMO_OUT)/$(DEMO_ANALYSE)/last.pth.tar \
		--image $$(for d in 0 3 5 8; do ls $(DEMO_DATA)/validation/$$d/*.png | head -n 1; done) --out $(DEMO_OUT)/analysis \
		--erf $(DEMO_ERF)=$(DEMO_OUT)/$(DEMO_ERF)/last.pth.tar

zoo: $(STAMP)
	$(PYTHON) -m timm_cada.zoo

# Operator- and model-level speed and memory, printed as markdown and written as CSV (benchmarks/RESULTS.md);
# BENCH_ARGS=--quick for a run of a few minutes, BENCH_ARGS="--device cuda --amp bf16" on a GPU,
# BENCH_ARGS="--level pairs" for the model-level targets alone (CADA against DW, in alternation, in NCHW and
# channels_last: --layout; each in three processes, the targets on their median: --processes).
# It runs in the default environment, as a user runs the models. BENCH_ENV sets a tuned one, which the
# output names: e.g. BENCH_ENV="MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184" keeps
# freed blocks for reuse instead of page-faulting them in again (benchmarks/RESULTS.md, 'Machine and run').
BENCH_ENV ?=

bench: $(STAMP)
	$(BENCH_ENV) $(PYTHON) benchmarks/bench.py $(BENCH_ARGS)

# The Fashion-MNIST study's training throughput as main trained it before against as train/study.py trains it
# now, measured in one run (benchmarks/study_speed.py; about 10 minutes on 2 cores; needs Debian's
# dataset-fashion-mnist, like `make study`). STUDY_SPEED_ARGS="--models ... --images-per-class N" for fewer.
STUDY_SPEED_ARGS ?=

bench-study: $(STAMP)
	PYTHONPATH=train $(PYTHON) benchmarks/study_speed.py $(STUDY_SPEED_ARGS)

# The ablation study on Fashion-MNIST (train/study.py; results in results/fashion_mnist/): 16 models x 3 seeds at
# the converged protocol's schedule, which its pilot chooses first (make pilot, on the validation split);
# STUDY_ARGS="--protocol one-epoch" for the short budget (one epoch of 40,000 images, about 4 h). Both need Debian's
# dataset-fashion-mnist (installed with apt-get when run as root, else the command says how). Resumable:
# finished runs are reused, an interrupted one resumes, and the results are rewritten after each run; runs train
# side by side, one per core. STUDY_ARGS=--quick: two models, one seed, a tiny split, a minute or two.
STUDY_ARGS ?=
PILOT_ARGS ?=

pilot: $(STAMP)
	$(PYTHON) train/pilot.py $(PILOT_ARGS)

study: $(STAMP)
	$(PYTHON) train/study.py $(STUDY_ARGS)

# README's figures of the biases (docs/analysis_*.png) from the study's shipped weights (results/fashion_mnist/
# weights/, which make study writes) and four Fashion-MNIST test images: no training
figures: $(STAMP)
	$(PYTHON) train/readme_figures.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) .pytest_cache .cache build *.egg-info
