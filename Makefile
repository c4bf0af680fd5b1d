# Every target sets itself up on a fresh machine that has python3 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_OUT := authz/v1/authz_pb2.py
ARGS ?=
# The mypyc build of the hot modules (authz/native.py lists them): rebuilt whenever any authz source changes,
# because authz/native.py runs the sources instead of a build older than any of them.
NATIVE_STAMP := build/native.stamp
AUTHZ_SOURCES := $(shell find authz -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: all setup protos native pure test test-fast run bench bench-quick bench-engine soak fuzz typecheck clean help

help:
	@echo "make run          - set up and serve the bundled example policies on 127.0.0.1:50051"
	@echo "make test         - set up and run the whole test suite (unit, conformance, live server, Envoy)"
	@echo "make bench        - full benchmark harness (about 22 minutes on 2 cores)"
	@echo "make bench-quick  - benchmark smoke run (about 2 minutes)"
	@echo "make bench-engine - in-process engine micro-benchmark (us per decision)"
	@echo "make soak         - 10 minutes at 80% of max rate, reloads and admin writes (bench/results/soak.json)"
	@echo "make fuzz         - longer fuzzing run of the policy parser and request path"
	@echo "make typecheck    - mypy over the authz package"
	@echo "make native       - compile the decision path with mypyc (part of setup; needs a C compiler)"
	@echo "make pure         - remove the compiled build: run the pure-Python sources"

all: setup

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench,fuzz,otel]'
	@# xds-protos ships an older copy of opentelemetry/proto/; put opentelemetry-proto's own files back.
	$(PY) -m pip install --quiet --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
	touch $(STAMP)

setup: $(STAMP) $(PROTO_OUT) $(NATIVE_STAMP)
	@echo "set up: the authz command is .venv/bin/authz ('. .venv/bin/activate' puts it on PATH)"

$(PROTO_OUT): protos/authz/v1/authz.proto protos/authz/v1/wire.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/authz/v1/authz.proto
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/authz/v1/wire.proto

protos: $(PROTO_OUT)

# A failed compile (no C compiler, say) leaves the sources to run: slower, same answers.
$(NATIVE_STAMP): $(AUTHZ_SOURCES) setup.py $(STAMP) $(PROTO_OUT)
	@mkdir -p build
	@echo "compiling the decision path with mypyc (about a minute; 'make pure' undoes it)"
	@find authz -name '*.so' -delete
	@if AUTHZ_NATIVE=1 $(PY) setup.py -q build_ext --inplace >build/native.log 2>&1; then \
		find authz -name '*.so' -exec touch {} +; touch $(NATIVE_STAMP); \
	else \
		echo "mypyc build failed (build/native.log): the pure-Python sources will run"; \
		find authz -name '*.so' -delete; \
	fi

native: $(NATIVE_STAMP)

pure:
	find authz -name '*.so' -delete
	rm -f $(NATIVE_STAMP)

# Two passes: everything on the compiled build (tests/test_native.py insists it is the one running), then the
# tests marked `sources`, which replace functions of the decision path in process, on the pure-Python sources.
test: setup
	$(PY) -m mypy
	AUTHZ_EXPECT_NATIVE=1 $(PY) -m pytest -q $(ARGS)
	AUTHZ_PURE_PYTHON=1 $(PY) -m pytest -q -m sources $(ARGS)

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
	rm -rf $(VENV) authz/v1/*_pb2*.py authz/v1/*_pb2.pyi .pytest_cache .mypy_cache .hypothesis build
	find authz -name '*.so' -delete
