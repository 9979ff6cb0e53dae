# Two commands: `make run` starts the service on 127.0.0.1:16381, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app flask_api

.PHONY: run test lint venv clean translations translations-update

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# The portal's catalogs (translations/*/LC_MESSAGES/messages.po) compiled to .mo, never committed.
# Each .mo is rebuilt only when its .po is newer, so two `make test` started side by side (CI)
# never rewrite a catalog the other run's tests are reading.
MO_FILES := $(patsubst %.po,%.mo,$(wildcard translations/*/LC_MESSAGES/messages.po))

translations: $(MO_FILES)

translations/%/LC_MESSAGES/messages.mo: translations/%/LC_MESSAGES/messages.po | venv
	$(BIN)/pybabel -q compile -l $* -i $< -o $@

# After changing portal texts: collect them, then translate the new entries in the .po files.
translations-update: venv
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext --no-location --omit-header \
		-o translations/messages.pot .
	$(BIN)/pybabel update -i translations/messages.pot -d translations --no-fuzzy-matching \
		--omit-header --no-location

run: venv translations
	$(FLASK) init-db
	$(FLASK) has-users || $(FLASK) seed-demo
	$(BIN)/gunicorn -c gunicorn.conf.py flask_api:application

lint: venv
	$(BIN)/ruff check .

test: lint translations
	$(BIN)/pytest

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
