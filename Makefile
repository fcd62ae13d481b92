# The two commands a newcomer needs:  `make run`  and  `make test`.
# Everything else is a step they run on the way. All targets are idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Airflow home, connections and PYTHONPATH for the local stack (stack/connections.py).
STACK_ENV = eval "$$($(PY) -m stack env)"

DEVICES ?= 5
# Celery workers of `SLUICE_EXECUTOR=celery make run` (ignored by the default LocalExecutor).
WORKERS ?=
MINUTES ?= 3

.PHONY: bootstrap venv install run up down status demo test test-unit lint-dags clean

bootstrap:                       ## system tools: mosquitto, PostgreSQL, Chromium, Maven, JDK >= 21, Go
	bash stack/bootstrap.sh

venv: $(VENV)/.installed         ## the project's virtualenv with requirements.txt
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@# `. .venv/bin/activate` then gives `airflow` the local stack's home and connections.
	grep -q 'python -m stack env' $(VENV)/bin/activate || \
	  printf '\n# Sluice: Airflow home and connections of the local stack\neval "$$(python -m stack env)"\n' >> $(VENV)/bin/activate
	touch $@

install: bootstrap venv          ## download and build the services (cached)
	$(PY) -m stack install

run: install                     ## the main job: the whole platform, running in the background until `make down` (SLUICE_EXECUTOR=celery WORKERS=N: Celery)
	$(PY) -m stack run --devices $(DEVICES) $(if $(WORKERS),--workers $(WORKERS))

up: install                      ## start the services (all, or SERVICES="kafka minio"), only what is not running
	$(PY) -m stack up $(SERVICES)

down:                            ## stop every service of the local stack
	$(PY) -m stack down

status:
	$(PY) -m stack status

demo: venv                       ## after `make run`: wait for MINUTES scheduled minutes, print landed vs loaded
	$(PY) -m stack demo --minutes $(MINUTES)

test: install                    ## lint (ruff), types (mypy --strict include/), then the whole suite
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(STACK_ENV) && $(PY) -m pytest

test-unit: venv
	$(STACK_ENV) && $(PY) -m pytest -m "not integration"

clean: down
	rm -rf runtime
