# Every target installs into .venv first, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint typecheck bench bench-relay image clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo,test]'
	touch $@

demo: install
	$(BIN)/skor-bridge demo

# Four tests at a time: most of a test's time is spent waiting on servers and receivers.
# The few that stop or reconfigure the RabbitMQ every test shares run alone afterwards.
test: install
	$(BIN)/pytest -n 4 -m "not serial"
	$(BIN)/pytest -m serial

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check skor_bridge tests
	$(BIN)/ruff format --check .
	$(BIN)/mypy skor_bridge

bench: install
	$(BIN)/skor-bridge bench --big-backlog --update-readme README.md
	$(BIN)/python -m skor_bridge.tools.bench.relay

# One relay worker vs two on a 4-partition topic, 50 ms receiver (README: Scaling out).
bench-relay: install
	$(BIN)/python -m skor_bridge.tools.bench.relay

image:
	docker build -t skor-bridge .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
