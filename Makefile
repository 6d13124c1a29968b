# Set-up and checks. Every target creates .venv (Python 3.11) if missing and installs only
# what it lacks: a second run skips what is done (stamps under .venv/.stamps).

PYTHON_BIN ?= python3.11
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
STAMPS     := $(VENV)/.stamps
WHEELHOUSE ?= ../shared/wheelhouse
DETECTRON2_COMMIT  := 02b5c4e295e990042a714712c21dc79b731e8833
PANOPTICAPI_COMMIT := 7bb4655548f98f3fedc07bf37e9040a992b054b0
DETECTRON2_GIT  := git+https://github.com/facebookresearch/detectron2.git@$(DETECTRON2_COMMIT)
PANOPTICAPI_GIT := git+https://github.com/cocodataset/panopticapi.git@$(PANOPTICAPI_COMMIT)
# Build the CUDA kernels whenever nvcc is present (so CI compiles every .cu file).
FORCE_CUDA ?= $(if $(shell command -v nvcc 2>/dev/null),1,0)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
MAX_JOBS ?= $(shell nproc)
OP_SOURCES := $(shell find mask2former/modeling/pixel_decoder/ops/csrc -type f 2>/dev/null) setup.py

.PHONY: venv build lint format chromium test test-fast quickstart benchmark clean

venv: $(STAMPS)/deps

$(PY):
	$(PYTHON_BIN) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(STAMPS)/deps: requirements.txt | $(PY)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	@if [ -d "$(WHEELHOUSE)" ]; then \
		echo "installing detectron2 and panopticapi from $(WHEELHOUSE)"; \
		$(PIP) install --no-build-isolation --find-links "$(WHEELHOUSE)" detectron2==0.6 panopticapi==0.1; \
	else \
		echo "no $(WHEELHOUSE): installing detectron2 and panopticapi from their git repositories"; \
		$(PIP) install --no-build-isolation "$(DETECTRON2_GIT)" "$(PANOPTICAPI_GIT)"; \
	fi
	$(PIP) install -r requirements.txt
	@mkdir -p $(STAMPS) && touch $@

# Builds the op extension in place (C++ always, CUDA when nvcc is there or FORCE_CUDA=1).
build: $(STAMPS)/build

$(STAMPS)/build: $(STAMPS)/deps $(OP_SOURCES)
	FORCE_CUDA=$(FORCE_CUDA) TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" MAX_JOBS=$(MAX_JOBS) \
		$(PIP) install --no-build-isolation --no-deps -e .
	@touch $@

lint: $(STAMPS)/deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMPS)/deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The web demo's browser test drives Debian's Chromium through Playwright (whose own browser
# download is not used). Installed here when possible (apt-get needs root); else the test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium for the browser test (apt-get install -y chromium)"; \
		apt-get install -y chromium || { apt-get update && apt-get install -y chromium; } || \
			echo "could not install Chromium: the browser test will be skipped"; \
	else \
		echo "Chromium is missing, so the browser test will be skipped; to run it:" \
			"sudo apt-get install -y chromium"; \
	fi

# The tests run in TEST_WORKERS pytest-xdist processes (0: in this one), each taking a whole test
# file at a time, so that a file's module fixtures are built once; torch computes on one thread
# in each (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMPS)/build lint chromium
	$(PYTEST) tests

test-fast: $(STAMPS)/build
	$(PYTEST) -m "not slow" tests

benchmark: $(STAMPS)/build
	$(PY) tools/benchmark_ms_deform_attn.py

# Synthetic data, training on CPU, evaluation, demo pictures: see tools/quickstart.py.
quickstart: $(STAMPS)/build
	$(PY) tools/quickstart.py

clean:
	rm -rf build $(STAMPS)/build mask2former/modeling/pixel_decoder/ops/_C*.so
