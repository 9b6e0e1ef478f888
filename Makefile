# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv idempotently: it is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Without mosquitto, the demo and the tests run amqtt, a pip-installed broker, from its own
# virtualenv (it pins websockets 15, which .venv cannot have). `make test` always builds it, so
# that the fallback broker's tests run (against both brokers) rather than skip; `make demo`
# builds it only when mosquitto is missing, or when OTC_NO_MOSQUITTO=1 says to act as if it were.
AMQTT_VENV := .venv-amqtt
AMQTT_VERSION := 0.12.1
AMQTT_STAMP := $(AMQTT_VENV)/.installed-$(AMQTT_VERSION)
MOSQUITTO := $(shell command -v mosquitto || ls /usr/sbin/mosquitto /usr/local/sbin/mosquitto 2>/dev/null)
ifeq ($(filter-out 0,$(OTC_NO_MOSQUITTO)),)
BROKER := $(if $(MOSQUITTO),,$(AMQTT_STAMP))
else
BROKER := $(AMQTT_STAMP)
endif

.PHONY: demo test lint types pytest bench clean $(AMQTT_VENV)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(AMQTT_VENV): $(AMQTT_STAMP)

$(AMQTT_STAMP):
	$(PYTHON) -m venv $(AMQTT_VENV)
	$(AMQTT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AMQTT_VENV)/bin/python -m pip install --quiet 'amqtt==$(AMQTT_VERSION)'
	touch $(AMQTT_STAMP)

demo: $(STAMP) $(BROKER)
	$(BIN)/otc demo

test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check otc feeds tests
	$(BIN)/ruff format --check otc feeds tests

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(AMQTT_STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/otc bench book

clean:
	rm -rf $(VENV) $(AMQTT_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
