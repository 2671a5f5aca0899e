# One-command set-up: every target creates .venv and installs the pinned set first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .loom-demo

.PHONY: venv demo test test-slow test-cluster lint clean mutation

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/loom demo --world multimodal --workdir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m 'slow and not cluster'

# A head and two worker nodes in their own network and mount namespaces (needs root)
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -s -m cluster tests/test_cluster.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR)

# Mutation testing (mutmut) of the core logic, one module at a time with only its own tests;
# CPU-heavy, so niced and kept out of CI. `make mutation MODULES="mining splits"` for some.
MODULES ?=
mutation: $(STAMP)
	nice -n 10 $(BIN)/python -m tests.mutation.run $(MODULES)
