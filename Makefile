# Podium: `make lab` brings up the lab appliance on this computer, `make test` runs the tests.
# Both install what they need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := build-essential cmake pkg-config git python3-venv apt-utils gnupg \
	systemd-container debootstrap iproute2 nftables iptables openssh-client openssh-server chrony tcpdump \
	docker-registry apache2-utils nginx wrk postgresql \
	prometheus prometheus-node-exporter prometheus-alertmanager \
	libvirt-dev libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libxml2-utils \
	ovmf dosfstools e2fsprogs fdisk systemd vagrant vagrant-libvirt dnsmasq-base \
	chromium chromium-driver keepalived
EXTRAS := models,test,postgres,libvirt,kubernetes,pulumi,grpc

.PHONY: deps system-deps venv lab lab-down test lint unit bench

system-deps:
	@# Services must not start on install: nothing here may run (or call out) unasked.
	@printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null
	@rm -f /usr/sbin/policy-rc.d

venv:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'

deps: system-deps venv

lab: deps
	$(VENV)/bin/podium lab up stacks/lab

lab-down:
	$(VENV)/bin/podium lab down stacks/lab

lint:
	$(VENV)/bin/ruff check src tests roles bench
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/python -m pytest -q -m "not lab and not vm"

test: deps lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout 1800

bench:
	$(PY) bench/provision.py
	$(PY) bench/usage_store.py
	$(PY) bench/gateway.py
	$(PY) bench/gateway.py --instant
	$(PY) bench/vagrant_up.py
	$(PY) bench/harness.py
