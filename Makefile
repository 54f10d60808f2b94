# One command surface for laptops and CI: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit tools bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

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
