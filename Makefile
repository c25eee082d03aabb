# The two commands: `make up` runs the farm here, `make test` runs every test.
PY := .venv/bin/python

.PHONY: up down status test test-sqlite lint format bootstrap bootstrap-test

up: bootstrap
	$(PY) scripts/farm.py up

down:
	$(PY) scripts/farm.py down

status:
	$(PY) scripts/farm.py status

# Every test on PostgreSQL, the production database (scripts/with_postgres.sh
# starts or installs a local server); on the embedded SQLite (make up's) every
# test but the end-to-end farm's, of which the seed's end-to-end file runs: the
# farm tests are half the time and test processes more than the database.
# (pytest's 5, "nothing selected", is no failure: PYTEST_ARGS may pick one part.)
test: bootstrap-test
	$(PY) -m pytest -m "not farm" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest tests/farm/test_end_to_end.py $(PYTEST_ARGS) || [ $$? -eq 5 ]
	scripts/with_postgres.sh $(PY) -m pytest $(PYTEST_ARGS)

# Every test, farm included, on SQLite only.
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
