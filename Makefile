# One command surface for laptops and CI: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit tools bench chaos clean constraints

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" --constraint constraints.txt
	touch $(STAMP)

# constraints.txt pins the runtime dependencies, for the image (Dockerfile) and this venv alike:
# pip resolves pyproject.toml's runtime dependencies alone, held to the versions this venv has.
# After adding, changing or upgrading a dependency, install it into the venv first (`pip install
# -e ".[dev]"` or `pip install -U aiohttp`, without the constraints), then run this;
# tests/test_packaging.py checks the file against pyproject.toml and the venv.
constraints:
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > $(VENV)/runtime.txt
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV)/freeze.txt
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/resolved.json \
	  --requirement $(VENV)/runtime.txt --constraint $(VENV)/freeze.txt
	{ echo "# The runtime dependencies, pinned: written by \`make constraints\`, do not edit."; \
	  $(BIN)/python -c 'import json, sys; items = json.load(open(sys.argv[1]))["install"]; print(*sorted((i["metadata"]["name"] + "==" + i["metadata"]["version"] for i in items), key=str.lower), sep="\n")' $(VENV)/resolved.json; \
	} > constraints.txt

# promtool and prometheus come from Debian's `prometheus` package (dashboard and alert tests);
# nginx from `nginx-light` (the HTTP conformance suite's reverse proxy; without it those cases
# are skipped, so a machine where it cannot be installed still runs the rest).
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing Debian's nginx-light package (nginx)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; } \
	  || echo "could not install nginx-light: the nginx conformance cases will be skipped"; }

demo: install
	$(BIN)/space-pipeline demo

lint: install
	$(BIN)/ruff check pipeline tests bench examples
	$(BIN)/ruff format --check pipeline tests bench examples

typecheck: install
	$(BIN)/mypy

test: install tools lint typecheck
	$(BIN)/pytest

# Throughput, CPU and memory against a bare baseline; about 7 minutes (ARGS="--quick" for ~2).
bench: install
	$(BIN)/python bench/bench.py $(ARGS)

# Soak under random faults (seeded): nothing lost, nothing reordered; about 3-4 minutes.
chaos: install
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build
