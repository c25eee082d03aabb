# The two commands: `make up` runs the farm here, `make test` runs every test.
PY := .venv/bin/python

.PHONY: up down status test test-sqlite lint format bootstrap bootstrap-test

up: bootstrap
	$(PY) scripts/farm.py up

down:
	$(PY) scripts/farm.py down

status:
	$(PY) scripts/farm.py status

# Every test twice: on the embedded SQLite, then on PostgreSQL, the production
# database (scripts/with_postgres.sh starts or installs a local server).
test: bootstrap-test
	$(PY) -m pytest $(PYTEST_ARGS)
	scripts/with_postgres.sh $(PY) -m pytest $(PYTEST_ARGS)

test-sqlite: bootstrap-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap-test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: bootstrap-test
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bootstrap:
	scripts/bootstrap.sh requirements/base.txt

bootstrap-test:
	scripts/bootstrap.sh requirements/test.txt
