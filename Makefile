# The README's two set-up commands: `make lab` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test lint typecheck unit deps clean

deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

lab: deps $(STAMP)
	$(BIN)/srv6ctl lab up
	$(BIN)/srv6ctl verify || { echo "verify failed: agent logs in /run/srv6ctl-lab/<node>/agent.log; see srv6ctl/lab/FINDINGS.md"; exit 1; }
	@echo "next: srv6ctl lab status · srv6ctl trace client-1 web · srv6ctl lab exec client-1 -- ip -6 route · srv6ctl lab down"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: deps $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
