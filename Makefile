# Two entry points, each installing what it needs first:  make app  |  make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch first: a wheel of torch 2.13.0 (CPU) is what `pip install torch==2.13.0` takes here, and with it
# installed nothing below asks for a CUDA build (torchvision is pinned to its 0.28.0 partner in pyproject).
TORCH  ?= torch==2.13.0

.PHONY: app test install browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[train,app,test]"
	touch $@

install: $(VENV)/.installed

# Debian's chromium for the browser test (never `playwright install`: it downloads a browser build).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

app: install
	$(PY) app.py $(ARGS)

test: install browser
	$(PY) -m pytest $(ARGS)
