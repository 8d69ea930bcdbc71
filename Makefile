# Moat: `make run` runs the whole gateway; `make test` runs the test suite.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# The gateway's settings for `make run`: $MOAT_CONFIG if set, else ./moat.yaml if present, else
# the defaults. Only for run: the tests build their own settings, and a user's moat.yaml must
# not change what they see.
ifeq ($(origin MOAT_CONFIG), undefined)
ifneq ($(wildcard moat.yaml),)
run: export MOAT_CONFIG := moat.yaml
endif
endif

.PHONY: install run test test-all test-faults test-fast lint format bench train clean

# `make test` leaves out the long fault runs (marker `fault`, tests/e2e/test_fault_load.py:
# about 2.5 minutes of mail under outages and kills); `make test-all`, what CI runs, has them.
PYTEST_MARK ?= not fault

# Safe to run twice at once (make install in one shell, make run in another): the install runs
# under a lock, and the make that waited finds the stamp fresh and installs nothing. The apt
# steps of scripts/ take a lock of their own (scripts/apt-install.sh).
$(INSTALLED): pyproject.toml
	@mkdir -p $(VENV)
	@flock $(VENV)/.install.lock scripts/install-venv.sh $(PYTHON) $(VENV)

install: $(INSTALLED)
	@scripts/ensure-rar-tool.sh

run: install
	@scripts/ensure-rabbitmq.sh
	@mkdir -p var
	$(PY) -m services

# The browser test (tests/e2e/test_ui_browser.py) needs Debian's chromium and chromium-driver:
# scripts/ensure-chromium.sh installs them as root; without them that one test is skipped.
# Likewise nmap (scripts/ensure-nmap.sh) for the SMTP enumeration and open-relay scan.
test: install
	@# The tests use the broker on 127.0.0.1:5672, whatever MOAT_BROKER__URL the shell has.
	@env -u MOAT_BROKER__URL scripts/ensure-rabbitmq.sh --management
	@scripts/ensure-postgres.sh
	@scripts/ensure-redis.sh
	@scripts/ensure-clamav.sh
	@scripts/ensure-chromium.sh
	@scripts/ensure-smtp-tools.sh
	@scripts/ensure-nmap.sh
	@scripts/ensure-kubectl.sh
	$(PY) -m pytest -m "$(PYTEST_MARK)" $(PYTEST_ARGS)

test-all:
	@$(MAKE) --no-print-directory test PYTEST_MARK=""

test-faults:
	@$(MAKE) --no-print-directory test PYTEST_MARK="fault"

test-fast: install
	@scripts/ensure-clamav.sh
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy moat services

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	@scripts/ensure-rabbitmq.sh
	$(PY) bench/smtp_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# The spam classifier: train the shipped model on the permitted corpora (deterministic;
# prints out-of-source and held-out figures), and evaluate it online, TREC style, on a corpus
# (EVAL_ARGS, e.g. --ham DIR --spam DIR, or --index FILE; see docs/classifier.md).
CORPUS ?= ../shared/corpus

train: install
	$(PY) -m services.scanner.classifier.training --corpus $(CORPUS) $(TRAIN_ARGS)

evaluate: install
	$(PY) -m services.scanner.classifier.evaluation $(or $(EVAL_ARGS),--phishing $(CORPUS)/phishing_pot/phishing-sample2500.tar.gz)
.PHONY: evaluate
