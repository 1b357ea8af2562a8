# Sekisho: `make demo` runs the end-to-end demo, `make test` the whole suite.
# Both bootstrap what they need: a .venv with the Python packages and, as root with
# apt, the Debian packages the tests use (TESTING.md).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sekisho-installed
DEMO_OUT ?= demo-out
export DEMO_OUT

DEBIAN_PACKAGES := oathtool gnome-keyring dbus openssl python3 util-linux passwd slapd ldap-utils \
                   pcscd libpcsclite-dev vsmartcard-vpcd gcc pkg-config libdbus-1-dev libglib2.0-dev \
                   libgirepository1.0-dev libcairo2-dev xvfb fonts-ipafont-gothic trayer xdotool
# Commands that show the Debian packages are there.
DEBIAN_CHECK    := oathtool gnome-keyring-daemon dbus-run-session dbus-send openssl /usr/bin/python3 runuser useradd \
                   /usr/sbin/slapd ldapadd /usr/sbin/pcscd /usr/include/PCSC/winscard.h \
                   /usr/lib/pcsc/drivers/serial/libifdvpcd.so gcc pkg-config /usr/include/dbus-1.0/dbus/dbus.h \
                   /usr/include/glib-2.0/glib.h /usr/include/gobject-introspection-1.0/girepository.h \
                   /usr/include/cairo/cairo.h /usr/bin/Xvfb /usr/share/fonts/opentype/ipafont-gothic/ipag.ttf trayer xdotool

.PHONY: demo run test lint typecheck unit bench system-deps clean help

help:
	@echo "make demo   - end-to-end run on embedded defaults and software devices (output in $(DEMO_OUT)/)"
	@echo "make run    - the service and the tray on the demo's laptop (needs a display; after make demo)"
	@echo "make test   - lint, type check and the whole test suite"
	@echo "make bench  - bench/unlock.py, trail.py, provision.py and agent.py (--json)"

# The Debian packages first: pyscard is built against libpcsclite.
$(STAMP): pyproject.toml | system-deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Sekisho needs Python 3.11 or newer as '$(PYTHON)'."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

system-deps:
	@missing=""; for c in $(DEBIAN_CHECK); do [ -e "$$c" ] || command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian packages: $(DEBIAN_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "Missing:$$missing. Install the Debian packages: $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

demo: $(STAMP) system-deps
	$(PY) -m demo

run: $(STAMP)
	@[ -f $(DEMO_OUT)/laptop/store.db ] || $(PY) -m demo
	$(PY) -m demo.run

lint: $(STAMP)
	$(VENV)/bin/ruff check sekisho agent enroll tests bench demo

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) system-deps
	$(PY) -m pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/unlock.py --json
	$(PY) bench/trail.py --json
	$(PY) bench/provision.py --json
	$(PY) bench/agent.py --json

clean:
	rm -rf $(VENV) $(DEMO_OUT) .mypy_cache .ruff_cache .pytest_cache .hypothesis
