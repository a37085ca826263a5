# edgecache — `make up` runs the stack on this machine, `make test` runs the whole suite.
# Both install what they need first (`make deps`), on a fresh machine with only
# python3.11, pip, node and npm; every step is skipped when it is already done.
#
#   make up   ARGS="--port 9100"        extra flags for `edgecache up`
#   make test ARGS="-k federator -x"    extra flags for pytest
#   make test TEST_WORKERS=0            in one process (default: two xdist workers)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
ARGS ?=
# pytest-xdist workers of `make test` (0: one process)
TEST_WORKERS ?= 2
AZURITE_VERSION := 3.35.0
TOOLS := .tools

# uv from PATH, else a private copy that `make deps` installs under .tools/uv.
UV_ON_PATH := $(shell command -v uv 2>/dev/null)
UV := $(or $(UV_ON_PATH),$(CURDIR)/$(TOOLS)/uv/bin/uv)
UV_PREREQ := $(if $(UV_ON_PATH),,$(TOOLS)/uv/bin/uv)

# Stamps live inside what they stand for, so deleting .venv or .tools redoes the step.
VENV_STAMP := .venv/.edgecache-synced
AZURITE_STAMP := $(TOOLS)/node_modules/.azurite-$(AZURITE_VERSION)
AWS := $(TOOLS)/awscli/bin/aws
S3CMD := $(TOOLS)/s3cmd/bin/s3cmd
RCLONE_STAMP := $(TOOLS)/.rclone
CHROMIUM_STAMP := $(TOOLS)/.chromium
PYPROJECTS := pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)

.PHONY: help deps up test lint

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

deps: $(VENV_STAMP) $(AZURITE_STAMP) $(AWS) $(S3CMD) $(RCLONE_STAMP) $(CHROMIUM_STAMP)  ## install uv, the workspace, Azurite, the S3 clients and the headless browser the tests drive

up: deps  ## run the whole stack in the foreground (ARGS: flags for edgecache up)
	$(UV) run --no-sync edgecache up $(ARGS)

test: deps  ## run the whole test suite (ARGS: flags for pytest)
	$(UV) run --no-sync pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

lint: $(VENV_STAMP)  ## ruff
	$(UV) run --no-sync ruff check .

# pip refuses to install into Debian's system Python (PEP 668) but not into --target.
$(TOOLS)/uv/bin/uv:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(TOOLS)/uv uv

# --frozen: install exactly what uv.lock says; a lock out of date with a pyproject.toml
# is a bug to fix with `uv lock`, not something to paper over here.
$(VENV_STAMP): uv.lock $(PYPROJECTS) | $(UV_PREREQ)
	$(UV) sync --all-packages --frozen
	touch $@

# Azure Blob origin tests (Azurite 3.35 is the last that runs on node 20).
$(AZURITE_STAMP):
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund azurite@$(AZURITE_VERSION)
	touch $@

# The AWS CLI v1 pins its own botocore; in its own venv it cannot fight aiobotocore's.
# Tests find it at .tools/awscli/bin/aws.
$(AWS): | $(UV_PREREQ)
	$(UV) venv --quiet --clear --python 3.11 $(TOOLS)/awscli
	$(UV) pip install --quiet --python $(TOOLS)/awscli/bin/python awscli

# s3cmd from PyPI, in its own venv like the AWS CLI.
$(S3CMD): | $(UV_PREREQ)
	$(UV) venv --quiet --clear --python 3.11 $(TOOLS)/s3cmd
	$(UV) pip install --quiet --python $(TOOLS)/s3cmd/bin/python s3cmd

# rclone is Debian's (there is no PyPI or npm package of it); installing it needs root.
$(RCLONE_STAMP):
	@command -v rclone >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone; \
	  else echo "rclone is missing: apt-get install rclone (as root)" >&2; exit 1; fi; }
	@mkdir -p $(TOOLS) && touch $@

# Headless Chromium for the admin status page test (tests/e2e/test_admin_api.py): Debian's
# (Playwright's own browser download cannot run here); installing it needs root.
$(CHROMIUM_STAMP):
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: apt-get install chromium (as root)" >&2; exit 1; fi; }
	@mkdir -p $(TOOLS) && touch $@
