# Two commands for a new user: `make demo` and `make test`. Everything else is set up on demand.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
EMULATORS := infra/local/emulators
NODE_STAMP := $(EMULATORS)/node_modules/.installed
IAC_STAMP := .venv-iac/.installed

.PHONY: demo test unit contract lint typecheck check bench bench-wan compat clean system-packages

# pdcat needs Python 3.11 or newer (pyproject.toml): a .venv made by an older one, or left broken, is
# made again rather than reused.
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
define make_venv
	@$(PYTHON) $(NEW_ENOUGH) 2>/dev/null || { echo "pdcat needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1). Run: make PYTHON=/path/to/python3.11" >&2; exit 2; }
	@$(BIN)/python $(NEW_ENOUGH) 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
endef

# The demo needs only the client and the embedded server; tests need the clouds' SDKs and the tools too.
# EDITABLE: the checkout itself on sys.path (a plain .pth line); setuptools' default editable finder
# costs every interpreter start ~12 ms (importlib.util, pathlib), a tenth of `pdcat ls`'s budget.
EDITABLE := --config-settings editable_mode=compat -e
$(BASE_STAMP): pyproject.toml
	$(make_venv)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check $(EDITABLE) .
	@touch $(BASE_STAMP)

$(STAMP): pyproject.toml
	$(make_venv)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check $(EDITABLE) '.[dev]'
	@touch $(STAMP) $(BASE_STAMP)

# Azurite and the Cosmos DB emulator, exactly as locked (the Azure backend's tests need them).
$(NODE_STAMP): $(EMULATORS)/package.json $(EMULATORS)/package-lock.json $(EMULATORS)/patch-cosmosdb-server.js
	@cd $(EMULATORS) && npm ci --silent --no-audit --no-fund
	@touch $(NODE_STAMP)

# cfn-lint and checkov in their own virtualenv: checkov's pins conflict with the app's boto3.
$(IAC_STAMP): infra/requirements-iac.txt $(STAMP)
	@$(BIN)/python tests/infra/iac_tools.py >/dev/null
	@touch $(IAC_STAMP)

# The system tools tests and bench run (mkfs.xfs, zstd, tar, mount...): installed with apt-get if missing.
system-packages:
	@sh infra/local/system_packages.sh

demo: $(BASE_STAMP)
	@$(BIN)/python infra/local/demo.py

# pdcat installed (as pipx would) into a fresh virtualenv of every Python 3.11+ this machine has, then
# serve, login, push and pull with it.
compat:
	@sh infra/local/compat.sh

test: $(STAMP) $(NODE_STAMP) $(IAC_STAMP) system-packages check
	@$(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=30  # the slowest, to keep the suite under 15 min

unit: $(STAMP)
	@$(BIN)/python -m pytest -q tests/unit

contract: $(STAMP) $(NODE_STAMP)
	@$(BIN)/python -m pytest -q tests/contract

# ruff (rules and format) and the layering contracts of pyproject.toml's [tool.importlinter].
lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports --no-logo --cache-dir $(VENV)/.import_linter_cache

typecheck: $(STAMP)
	@$(BIN)/mypy

check: lint typecheck

# pdcat against its peers (installed with apt-get when missing) and the original method: bench/README.md.
bench: $(STAMP) system-packages
	@$(BIN)/python bench/run.py $(BENCH_ARGS)

# The WAN profile (bench/README.md): two network namespaces, a 200 Mbit/s tbf link, +40 ms RTT. Needs root.
bench-wan: $(STAMP) system-packages
	@$(BIN)/python bench/wan.py $(WAN_ARGS)

clean:
	rm -rf $(VENV) .venv-iac build $(EMULATORS)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo .bench
