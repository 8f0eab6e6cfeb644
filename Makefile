# Berth: two commands for a newcomer, `make demo` and `make test`.
# Every target installs what it needs, idempotently.
SHELL := /bin/bash
PYTHON_BASE := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
COLLECTION_LINK := ansible_collections/berth/fleet
# tools run from the venv without activating it
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Debian packages the project needs on the controller and for the local lab (docs/dependencies.md says why)
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev git \
	openssh-client openssh-server debootstrap systemd-container iproute2 \
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base \
	iptables haproxy socat rsync procps linux-image-amd64 initramfs-tools e2fsprogs chromium

.PHONY: help deps apt venv collection demo provision reconcile destroy lab-shell test lint unit integration lab-host sanity molecule clean

help:
	@echo "make demo      - run the main job on the built-in local lab estate (KEEP=1 leaves it up)"
	@echo "make test      - install what is needed and run every test"
	@echo "make provision / destroy / lab-shell [ENV=lab|ci|dev]"

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
# the environment the lab verbs act on (a local-substrate inventory)
ENV ?= lab
# make demo KEEP=1 leaves the lab running (then: make lab-shell, make destroy)
KEEP ?=

demo: deps
	python tools/demo.py --env $(ENV) $(if $(KEEP),--keep)

provision: deps
	ansible-playbook -i inventories/$(ENV) playbooks/provision.yml

# every service of the environment back to its desired state (machines, version, rotation)
reconcile: deps
	@for service in $$(ansible-inventory -i inventories/$(ENV) --graph | grep -oE '@svc_[A-Za-z0-9_-]+' | sed 's/^@svc_//' | sort -u); do \
	  echo "== reconcile $$service"; start=$$(date +%s); \
	  ansible-playbook -i inventories/$(ENV) playbooks/reconcile.yml -e service=$$service | grep -E 'msg:.*converges|batch\(es\)|nothing to do|failed=[1-9]|ERROR|fatal' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; echo "   done in $$(( $$(date +%s) - start )) s"; \
	done

destroy: deps
	@start=$$(date +%s); ansible-playbook -i inventories/$(ENV) playbooks/destroy.yml | tail -3; \
	  echo "destroyed in $$(( $$(date +%s) - start )) s"

# a shell inside the lab network namespace (ssh/curl the lab hosts from there)
lab-shell:
	@ns=$$(ansible-inventory -i inventories/$(ENV) --host $$(ansible-inventory -i inventories/$(ENV) --graph | grep -m1 -oE '[a-z]+-[0-9]+') \
	  | python3 -c 'import json,sys; print(json.load(sys.stdin)["berth_lab_namespace"])'); \
	  echo "inside network namespace $$ns (exit to leave)"; exec nsenter --net=/run/netns/$$ns $${SHELL:-bash}

# Python that ships without a .py suffix (scripts the roles install on hosts)
PY_SCRIPTS = roles/loadbalancer/files/berth-haproxy-state

lint: deps
	ruff check plugins tests bench tools services molecule $(PY_SCRIPTS)
	ruff format --check plugins tests bench tools services molecule $(PY_SCRIPTS)
	cd $(COLLECTION_LINK) && mypy --explicit-package-bases plugins/module_utils
	# the floors of module_utils: imports only point down (contracts in pyproject.toml)
	PYTHONPATH=. lint-imports --no-cache
	mypy --strict $(PY_SCRIPTS)
	# awx/ drives AWX with awx.awx, from the `ansible` package on PyPI unpacked once into .cache/classic
	# (tools/classic_collections.py); ansible-lint sees that collection alone, through .cache/lint-collections
	python tools/classic_collections.py >/dev/null
	@mkdir -p .cache/lint-collections/ansible_collections/awx
	@ln -sfn ../../../classic/ansible_collections/awx/awx .cache/lint-collections/ansible_collections/awx/awx
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR):$(CURDIR)/.cache/lint-collections ansible-lint --profile production --offline --nocolor -q
	# module arguments checked against each module's own spec (ansible-lint's args rule is experimental: enabled
	# here, and an error rather than a warning) for awx/, where nothing else runs the awx.awx modules
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR):$(CURDIR)/.cache/lint-collections ansible-lint --profile production --offline --nocolor -q \
	  --enable-list args -w 'jinja[spacing]' -w 'fqcn[deep]' awx

sanity: deps
	@tests/sanity/run.sh

# the unit tests on every core (pytest-xdist); they share nothing but the machine
unit: deps
	pytest -n auto -q tests/unit

# the integration tests in two lanes at once (tests/integration/conftest.py: LANES, LaneScheduling): the shared nspawn
# lab's modules on one worker, the libvirt labs (VM, metal, molecule) on the other, then the rest
INTEGRATION := pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=15 tests/integration

integration: deps lab-host
	$(INTEGRATION)

# the labs of both lanes at once hold up to ~35 nspawn machines, each of whose systemd takes ~8 inotify
# instances of root (the default fs.inotify.max_user_instances, 128, is about 15 machines): raised once
lab-host:
	@now=$$(cat /proc/sys/fs/inotify/max_user_instances); if [ "$$now" -lt 1024 ]; then \
	  echo "lab host: fs.inotify.max_user_instances $$now -> 1024 (the two test lanes' labs run at once)"; \
	  sysctl -qw fs.inotify.max_user_instances=1024 || echo "lab host: could not raise it: a lab that does not fit says so at its preflight"; fi

# molecule/default: the service_instance role on two local libvirt VMs (TCG), created and destroyed
# by Berth's own provision/destroy playbooks; converge, idempotence, testinfra verify. About 2 min.
# `make test` runs it in the libvirt lane of the integration tests (tests/integration/test_molecule.py).
molecule: deps
	molecule test

# pytest exits 5 when it collected nothing: that is a failure here, never a pass. The 15 slowest tests,
# when each module ran and on which worker are printed, and when each part began, to keep make test
# well under 30 min
test: deps lint sanity lab-host
	@date -u +'unit tests from %T'
	pytest -n auto --durations=15 tests/unit
	@date -u +'integration tests (molecule included) from %T'
	$(INTEGRATION)
	@date -u +'make test done at %T'

clean:
	rm -rf ansible_collections .stamps .pytest_cache .mypy_cache .ruff_cache

# Berth's execution environment (docs/awx.md): podman from Debian, the lab's base rootfs imported as
# the base image, ansible-builder build, a playbook run in it by ansible-runner. About 2 min cold.
ee: deps
	python tools/ee.py all
