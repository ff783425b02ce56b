# Set-up, demo and tests on a fresh machine. `make demo` and `make test` do all the set-up they need.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch is installed first: a bare `torch` requirement would pull several GB of
# CUDA packages. On a GPU machine, install the torch build you want first and set TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo learning-demo test test-fast test-unit test-dist clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch $@

# The embedded default: tiny Llama, bundled instruction data, full fine-tune on ZeRO-2, 2 CPU workers, W&B offline.
demo: setup
	WANDB_MODE=offline $(VENV)/bin/shardtune train experiment=demo

# Full fine-tuning, LoRA and QLoRA of the shipped tiny base on word reversal; prints exact match before and after.
learning-demo: setup
	$(PYTHON) scripts/learning_demo.py

# Two pytest workers, a test file each at a time: most of a multi-process test's time is start-up, so two
# files in flight keep both cores busy (three were slower on 2 cores: measured 2026-12-02).
test: setup
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

# The developer's loop (a few minutes): the unit tier and the cheapest multi-process tests (marker `fast`).
test-fast: setup
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "unit or fast"

test-unit: setup
	$(PYTHON) -m pytest -q tests/unit

test-dist: setup
	$(PYTHON) -m pytest -q tests/dist

clean:
	rm -rf runs outputs multirun wandb .pytest_cache
