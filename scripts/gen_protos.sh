#!/usr/bin/env bash
# Regenerates the Python code and typed stubs for protos/ in place. CI runs it and fails on any diff.
set -euo pipefail
cd "$(dirname "$0")/.."
buf lint
buf format --diff --exit-code
rm -f protos/sandbox/v1/*_pb2*.py protos/sandbox/v1/*_pb2*.pyi
python -m grpc_tools.protoc -I protos \
  --python_out=protos --mypy_out=protos \
  --grpc_python_out=protos --mypy_grpc_out=protos \
  protos/sandbox/v1/sandbox.proto
