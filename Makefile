# The README's two commands: `make demo` and `make test`. Both install what they need first.
VENV   := .venv
IOT    := $(VENV)/bin/iot
PYTHON ?= python3

.PHONY: demo test install lint stack-up stack-down clean

$(VENV)/.installed: pyproject.toml
	@echo "==> python environment ($(VENV))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,firmware]'
	touch $@

install: $(VENV)/.installed
	@echo "==> stack programs (apt, maven, go; cached)"
	$(IOT) stack install

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install
	bash tests/run.sh

demo: install
	$(IOT) demo

stack-up: install
	$(IOT) stack up

stack-down:
	$(IOT) stack down

clean: stack-down
	rm -rf .stack
