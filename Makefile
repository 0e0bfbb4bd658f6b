# The README's two set-up commands: `make lab` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab lab-here test test-kernels test-kube-apiserver test-kubernetes lint typecheck unit deps clean

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
# 6.1; with NEWER=1 bookworm-backports' 6.12 is installed first: scripts/vm-deps.sh
# --newer), whatever this host's own kernel can do. Every kernel runs; the target fails if
# any of them failed.
test-kernels: deps $(STAMP)
	@bash scripts/vm-deps.sh $(if $(NEWER),--newer)
	@failed=""; \
	for release in $$($(BIN)/python -m srv6ctl.hostvm --list); do \
		echo "== kernel-SRv6 tests on Debian's $$release (in a VM)"; \
		SRV6CTL_KERNEL_TESTS=vm-all SRV6CTL_GUEST_KERNEL=$$release \
			$(BIN)/pytest -q -p no:cacheprovider -m kernel_srv6 || failed="$$failed $$release"; \
	done; \
	if [ -n "$$failed" ]; then echo "== kernel-SRv6 tests failed on:$$failed"; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: deps $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# The control-plane tests against a real kube-apiserver (built from the Kubernetes source
# elsewhere: README.md, "Against a real kube-apiserver"), with Debian's etcd.
test-kube-apiserver: $(STAMP)
	SRV6CTL_KUBE_APISERVER=$${SRV6CTL_KUBE_APISERVER:?path to kube-apiserver} $(BIN)/pytest -q -p no:cacheprovider tests/test_real_apiserver.py

# The lab's real-Kubernetes parts against binaries built elsewhere (README.md, "A lab on
# real Kubernetes"): SRV6CTL_KUBERNETES is the directory holding them.
test-kubernetes: $(STAMP)
	@bash scripts/system-deps.sh kubernetes
	SRV6CTL_KUBERNETES=$${SRV6CTL_KUBERNETES:?directory of Kubernetes binaries} $(BIN)/pytest -q -p no:cacheprovider tests/test_lab_kubernetes.py

clean:
	rm -rf $(VENV) build *.egg-info
