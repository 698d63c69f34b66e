# make demo | make test: everything else is a detail (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
export SKYPLANE_VENV := $(abspath $(VENV))

.PHONY: setup test demo emulators-up emulators-down

setup:
	@scripts/setup.sh

test: setup
	$(PY) -m pytest tests -q

demo: setup
	$(PY) -m skyplane_provider.demo

emulators-up: setup
	@scripts/emulators start

emulators-down:
	@scripts/emulators stop
