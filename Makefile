# BraTS Studio: two set-up commands, `make run` and `make test`, both create .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
API_PORT ?= 8000

.PHONY: run serve test lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

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
