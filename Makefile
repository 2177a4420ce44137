# Two commands matter: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint protos browser haproxy bench docker-check podman-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lenet serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The gRPC stubs of app/protos/grpc_predict_v2.proto, committed; rerun after editing the .proto.
# They are built into a descriptor pool of their own rather than protobuf's default one, where
# tritonclient.grpc (same package `inference`, other file) would clash with them in one process.
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		app/protos/grpc_predict_v2.proto
	sed -i 's/_descriptor_pool.Default().AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
		app/protos/grpc_predict_v2_pb2.py

# Debian's Chromium drives the web page's end-to-end tests (Playwright cannot download one here);
# a CJK font lets the zh-TW screenshots show characters rather than boxes.
browser:
	@{ command -v /usr/bin/chromium >/dev/null && [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; } || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver \
			fonts-wqy-microhei >/dev/null; }

# Debian's HAProxy runs deploy/haproxy/haproxy.cfg in the deployment tests.
haproxy:
	@command -v haproxy >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq haproxy >/dev/null; }

test: $(STAMP) browser haproxy
	$(MAKE) lint
	$(VENV)/bin/pytest

# The container files, checked without a Docker engine (pytest runs the same checks).
docker-check: $(STAMP)
	scripts/check_docker.sh

# A real build and run with podman, no Docker engine; root, about 11 minutes the first time.
podman-smoke:
	scripts/podman_smoke.sh

# The benchmark: LitServe lives in its own venv so it cannot change the service's dependencies.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 litserve==0.2.19
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
