# The two commands of the README. Both create .venv when missing and install from constraints.txt
# (pinned versions verified on the 2-core CPU machines; see ../shared/STACK.md for why each pin).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.anodet-installed
PYTEST_ARGS ?=

.PHONY: demo test install bench clean-demo

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/anodet demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/anodet bench

clean-demo:
	rm -rf anodet-data .prefect
