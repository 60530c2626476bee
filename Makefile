# Lockstep: `make run` to try it, `make test` to prove it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Checkout (and later e-mail) links point at the host and port actually served.
export PUBLIC_BASE_URL ?= http://$(HOST):$(PORT)

.PHONY: install run serve worker test lint format messages bench mutants clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@echo "Lockstep: admin http://$(HOST):$(PORT)/admin/  API docs http://$(HOST):$(PORT)/api/docs/  (+ worker)"
	@echo "Ctrl-C stops the server, the worker and the embedded PostgreSQL (if in use)."
	$(BIN)/python manage.py procrastinate worker & worker=$$!; \
	stop="kill $$worker 2>/dev/null; wait $$worker; $(BIN)/python -m config.embedded_db stop"; \
	trap "$$stop; trap - EXIT; exit 130" INT TERM; trap "$$stop" EXIT; \
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# The worker alone (sweeps every minute, refund retries): run one or more beside the web servers.
worker: install
	$(BIN)/python manage.py procrastinate worker

# Production-style: gunicorn with several workers and one job worker (set DEBUG=false, SECRET_KEY, ALLOWED_HOSTS);
# WORKERS processes (one per core) of THREADS threads, access log on stdout, metrics of all workers summed
# through var/prometheus (config/gunicorn.py).
serve: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput
	$(BIN)/python manage.py procrastinate worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/gunicorn config.wsgi --config config/gunicorn.py --bind $(HOST):$(PORT)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-extract and compile the Arabic catalogs of every app that has them (needs gettext; the .mo files are committed).
messages: install
	for app in $(patsubst %/locale,%,$(wildcard */locale)); do \
		(cd $$app && ../$(BIN)/python ../manage.py makemessages -l ar && ../$(BIN)/python ../manage.py compilemessages); \
	done

bench: install
	$(BIN)/python -m bench

# Remove each guard in tools/mutants.json, one at a time; some test must fail for each (minutes).
mutants: install
	$(BIN)/python tools/mutants.py

# Stops the embedded PostgreSQL first: its files are under var/.
clean:
	-test -x $(BIN)/python && $(BIN)/python -m config.embedded_db stop
	rm -rf $(VENV) var
