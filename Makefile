# One command surface for laptops and CI: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make demo` alone installs only the `demo` extra, stamped apart: a later `make test` still
# installs `dev` (which holds `demo`, so after it `make demo` installs nothing more).
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo test lint typecheck unit tools bench chaos chart clean constraints

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

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[demo]" --constraint constraints.txt
	touch $(DEMO_STAMP)

demo: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
	$(BIN)/space-pipeline demo $(ARGS)

# The chart's manifests, rendered offline with the Helm SDK the tests use (no helm binary):
# VALUES=my-values.yaml for a values file, ARGS for more (--values, --release, --namespace).
chart: install
	$(BIN)/python tools/render_chart.py $(if $(VALUES),--values $(VALUES)) $(ARGS)

lint: install
	$(BIN)/ruff check pipeline tests bench examples tools
	$(BIN)/ruff format --check pipeline tests bench examples tools

typecheck: install
	$(BIN)/mypy

test: install tools lint typecheck
	$(BIN)/pytest

# Throughput, CPU and memory against a bare baseline; about 7 minutes (ARGS="--quick" for ~2).
bench: install
	$(BIN)/python bench/bench.py $(ARGS)

# Soak under random faults (seeded), broker restarts among them: nothing lost, nothing
# reordered; about 3-4 minutes.
chaos: install
	$(BIN)/python bench/chaos.py

# The chaos menu for 30 minutes (not part of `make test`), reporting each member's RSS curve. On
# 4 partitions with 2 s producer batches: tansu on S3 lists every batch object of a partition on
# each fetch, and moto lists slower the more objects the bucket holds.
.PHONY: soak
soak: install
	$(BIN)/python bench/chaos.py --minutes 30 --partitions 4 --linger-ms 2000 $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build
