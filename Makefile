# Every target sets itself up on a fresh machine that has python3 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_OUT := authz/v1/authz_pb2.py
ARGS ?=

.PHONY: all setup protos test test-fast run bench bench-quick bench-engine soak fuzz typecheck clean help

help:
	@echo "make run          - set up and serve the bundled example policies on 127.0.0.1:50051"
	@echo "make test         - set up and run the whole test suite (unit, conformance, live server, Envoy)"
	@echo "make bench        - full benchmark harness (about 22 minutes on 2 cores)"
	@echo "make bench-quick  - benchmark smoke run (about 2 minutes)"
	@echo "make bench-engine - in-process engine micro-benchmark (us per decision)"
	@echo "make soak         - 10 minutes at 80% of max rate, reloads and admin writes (bench/results/soak.json)"
	@echo "make fuzz         - longer fuzzing run of the policy parser and request path"
	@echo "make typecheck    - mypy over the authz package"

all: setup

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench,fuzz,otel]'
	@# xds-protos ships an older copy of opentelemetry/proto/; put opentelemetry-proto's own files back.
	$(PY) -m pip install --quiet --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
	touch $(STAMP)

setup: $(STAMP) $(PROTO_OUT)
	@echo "set up: the authz command is .venv/bin/authz ('. .venv/bin/activate' puts it on PATH)"

$(PROTO_OUT): protos/authz/v1/authz.proto protos/authz/v1/wire.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/authz/v1/authz.proto
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/authz/v1/wire.proto

protos: $(PROTO_OUT)

test: setup
	$(PY) -m mypy
	$(PY) -m pytest -q $(ARGS)

run: setup
	$(PY) server.py --bundle examples/bundle --state-dir .state $(ARGS)

bench: setup
	$(PY) -m bench $(ARGS)

bench-quick: setup
	$(PY) -m bench --quick $(ARGS)

bench-engine: setup
	$(PY) -m bench.engine $(ARGS)

soak: setup
	$(PY) -m bench.soak --minutes 10 $(ARGS)

fuzz: setup
	$(PY) -m tests.fuzz --seconds 600 $(ARGS)

typecheck: setup
	$(PY) -m mypy

clean:
	rm -rf $(VENV) authz/v1/*_pb2*.py authz/v1/*_pb2.pyi .pytest_cache .mypy_cache .hypothesis
