# Berth: two commands for a newcomer, `make demo` and `make test`.
# Every target installs what it needs, idempotently.
SHELL := /bin/bash
PYTHON_BASE := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
COLLECTION_LINK := ansible_collections/berth/fleet
# tools run from the venv without activating it
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Debian packages the project needs on the controller and for the local lab (see shared/LAB.md)
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev git \
	openssh-client openssh-server debootstrap systemd-container iproute2 \
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base \
	iptables haproxy socat wrk rsync procps linux-image-amd64 initramfs-tools ipmitool e2fsprogs

.PHONY: help deps apt venv collection demo test lint unit integration sanity clean

help:
	@echo "make demo   - run the main job on the built-in local lab estate"
	@echo "make test   - install what is needed and run every test"

deps: apt venv collection

apt: .stamps/apt
.stamps/apt: Makefile
	@mkdir -p .stamps
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	    | awk '$$NF=="installed"{print $$1}' | sort | comm -13 - <(tr ' ' '\n' <<<"$(APT_PACKAGES)" | grep . | sort)); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "apt: all packages present"; fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON_BASE) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check ".[test]"
	@$(BIN)/python -c 'import ansible, libvirt, hypothesis, pytest' # fail here if the install did not
	@touch $@

collection: $(COLLECTION_LINK)
$(COLLECTION_LINK):
	@mkdir -p ansible_collections/berth
	@ln -sfn ../.. $(COLLECTION_LINK)

ENVIRONMENTS := dev ci prod lab

demo: deps
	@for env in $(ENVIRONMENTS); do \
	  ansible-playbook -i inventories/$$env playbooks/placement.yml | sed -n '/msg: |-/,/^$$/p' | sed '1d; s/^        //'; \
	done

lint: deps
	ruff check plugins tests bench
	ruff format --check plugins tests bench
	cd $(COLLECTION_LINK) && mypy --explicit-package-bases plugins/module_utils
	ansible-lint --profile production --offline --nocolor -q

sanity: deps
	@tests/sanity/run.sh

unit: deps
	pytest -q tests/unit

integration: deps
	pytest -q tests/integration

# pytest exits 5 when it collected nothing: that is a failure here, never a pass
test: deps lint sanity
	pytest tests

clean:
	rm -rf ansible_collections .stamps .pytest_cache .mypy_cache .ruff_cache
