# make demo | make test: everything else is a detail (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
export SKYPLANE_VENV := $(abspath $(VENV))

.PHONY: setup test demo emulators-up emulators-down reliability-report

# Also installs the google Airflow provider with --no-deps into $(VENV)-extras/google, not into the venv
# (there it would pull 107 packages and downgrade two of ours): only its hook's test uses it, in a
# subprocess with that directory on PYTHONPATH (docs/credentials.md).
setup:
	@scripts/setup.sh

# The suite starts hundreds of Python processes (coordinators, gateways, CLIs) that import our packages:
# compiled once here, not again in each (~0.07 CPU-s apiece where PYTHONDONTWRITEBYTECODE is set: nothing compiled is kept).
test: setup
	$(PY) -m compileall -q -j 0 planner gateway skyplane_provider
	$(PY) -m pytest tests -q --durations=30

demo: setup
	$(PY) -m skyplane_provider.airflow.demo

emulators-up: setup
	@scripts/emulators start

emulators-down:
	@scripts/emulators stop

# The fault, fuzz and bad-input tests, each recording what it tried and saw; then docs/reliability.md.
# The page is written even when a test fails (its row is then missing); the exit status is pytest's.
reliability-report: setup
	@report=$$(mktemp); \
	SKYPLANE_RELIABILITY_REPORT=$$report $(PY) -m pytest tests -q -k "fault or fuzz or bad_input"; status=$$?; \
	$(PY) -m tests.reliability_report $$report --keep docs/reliability.md > $$report.md \
	  && mv $$report.md docs/reliability.md; rm -f $$report $$report.md; \
	echo "docs/reliability.md: $$(grep -c '^| ' docs/reliability.md) table lines"; exit $$status
