# Two commands: `make demo` and `make test`. Everything else is a building block.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Reinstall only when the project's dependency list changes; a second run takes seconds.
$(STAMP): pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(PY) $(VENV)
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check mofe_cli mofe_serve mofe_batch training model_registry tests benchmarks scripts deploy

test: setup lint
	$(BIN)/python -m pytest -q -rs

demo: setup
	$(BIN)/python scripts/demo.py

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
