# The README's two set-up commands: `make lab` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab lab-here test test-kernels lint typecheck unit deps clean

deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# A host kernel without SRv6 cannot hold the lab: then the same lab runs, and is verified,
# in a VM booted with Debian's own kernel over this host's files (`srv6ctl lab vm`).
lab: deps $(STAMP)
	@if $(BIN)/srv6ctl lab kernel >/dev/null; then \
		$(MAKE) --no-print-directory lab-here; \
	else \
		$(BIN)/srv6ctl lab kernel; \
		$(BIN)/srv6ctl lab vm; \
	fi

lab-here: $(STAMP)
	$(BIN)/srv6ctl lab up
	$(BIN)/srv6ctl verify || { echo "verify failed: agent logs in /run/srv6ctl-lab/<node>/agent.log; see srv6ctl/lab/FINDINGS.md"; exit 1; }
	@echo "next: srv6ctl lab status · srv6ctl trace client-1 web · srv6ctl lab exec client-1 -- ip -6 route · srv6ctl lab down"

# Every kernel-SRv6 test in a VM, once per Debian kernel installed for guests (bookworm's
# cloud kernel at least: scripts/vm-deps.sh), whatever this host's own kernel can do.
test-kernels: deps $(STAMP)
	@bash scripts/vm-deps.sh
	@for release in $$($(BIN)/python -m srv6ctl.hostvm --list); do \
		echo "== kernel-SRv6 tests on Debian's $$release (in a VM)"; \
		SRV6CTL_KERNEL_TESTS=vm-all SRV6CTL_GUEST_KERNEL=$$release \
			$(BIN)/pytest -q -p no:cacheprovider -m kernel_srv6 || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: deps $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
