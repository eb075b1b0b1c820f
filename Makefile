# gate's two commands:  make demo  (run the main job on bundled samples)  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gate-installed

.PHONY: demo test lint mosquitto

demo: $(STAMP)
	$(BIN)/gate demo

test: $(STAMP) mosquitto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# torch first, pinned to the CPU build on this machine's disk, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,browse]'
	# a second OSDP control panel for the interop test; its module is also called osdp
	$(BIN)/pip install --quiet --upgrade --target $(VENV)/osdp-python osdp==1.6 pycryptodome pyserial
	touch $(STAMP)

# The tests talk to a real mosquitto broker; install Debian's when missing and we may.
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	  { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; } || \
	  echo "mosquitto is not installed: the broker tests will be skipped"
