# The project's entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
# Podman reads only the project's own settings (runc, ulimits).
export CONTAINERS_CONF := $(CURDIR)/images/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export MOLECULE_GLOB := molecule/*/molecule.yml
# Scenarios that run in `make test` (the ec2 one needs an AWS account), in
# this order; `a+b` runs b next to a, `a+b,c` runs b then c next to a
# (scripts/molecule-scenarios). upgrade's one host, then sso's, run next to
# default's three: together they keep both CPUs of a 2-CPU machine busy where
# each alone waits on its hosts. postgresql runs alone: its load test
# measures what the machine gives the server.
SCENARIOS ?= default+upgrade,sso postgresql

.PHONY: help host-packages venv images test lint unit molecule sandbox sandbox-destroy ui-check constraints

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Everything else starts here, so `make sandbox` and `make test` on a fresh
# machine install what is missing themselves (as root, or through sudo).
host-packages: ## install the missing Debian/Ubuntu packages (podman, debootstrap, chromium, ...)
	@scripts/install-host-packages

venv: host-packages $(VENV)/.installed ## create the pinned controller toolchain in .venv

$(VENV)/.installed: requirements.txt constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

constraints: ## re-pin constraints.txt from a fresh venv built from requirements.txt
	rm -rf $(VENV)-pin && python3 -m venv $(VENV)-pin
	$(VENV)-pin/bin/pip install --quiet -r requirements.txt
	{ sed -n '1,2p' constraints.txt; $(VENV)-pin/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf $(VENV)-pin

images: host-packages ## build the EC2-like Debian 12/13 test host images (if their recipe changed)
	@# One build at a time: CI starts one in the background (see .ci/run).
	flock $(CURDIR)/.images.lock images/build

test: lint unit molecule ## everything CI runs: lint, unit tests, Molecule scenarios

lint: venv ## yamllint and ansible-lint (production profile)
	yamllint --strict .
	ansible-lint --strict

unit: venv ## fast controller-side tests (input validation, inventories, AWS playbooks against moto)
	pytest -q -n 2 --dist loadfile tests

molecule: venv images ## the Molecule scenarios on EC2-like containers
	@scripts/molecule-scenarios $(SCENARIOS)

sandbox: venv images ## bring up a local EC2-like host running the whole stack (SANDBOX_AUTH=oidc: single sign-on, mock provider)
	scripts/sandbox up

sandbox-destroy: ## remove the sandbox host
	scripts/sandbox down

ui-check: venv ## open the sandbox's UI in a real browser (chromium) and check what a user sees
	scripts/ui-check
