# BraTS Studio: two set-up commands, `make run` and `make test`, both create .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
# 127.0.0.1: this machine only. HOST=0.0.0.0 serves the network and needs a login (README "Deploying for a group");
# SHARED=1: a reverse proxy on this machine serves it to others (login required); INSECURE=1: no login, on purpose.
HOST ?= 127.0.0.1
API_PORT ?= 8000

.PHONY: run serve test lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app.launch --host $(HOST) --port $(PORT) $(if $(SHARED),--shared) $(if $(INSECURE),--insecure)

serve: $(STAMP)
	$(PY) -m serve.api --port $(API_PORT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rebuilds the committed NiiVue component bundle (app/viewer/frontend/build) from its src/ with the pinned lockfile.
frontend:
	cd app/viewer/frontend && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf $(VENV) .pytest_cache
