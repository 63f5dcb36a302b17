# Two commands matter: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv when it is missing and install the project with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo install bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# Reinstall when the build description or the C extension changes.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard */*.c)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/fleetcloak demo

bench: $(STAMP)
	$(BIN)/python bench/decode.py

fuzz: $(STAMP)
	$(BIN)/pytest -q -m slow tests/codecs/test_fuzz.py

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name '*.so' -not -path './.venv/*' -delete
