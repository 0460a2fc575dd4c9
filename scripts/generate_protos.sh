#!/usr/bin/env bash
# Regenerates the Python modules in protocol/ from the .proto files in proto/.
# Run after editing a .proto file; the output is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=protocol
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
python -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/*.proto
# protoc writes absolute imports ("import model_config_pb2"); the modules live in a package.
sed -i -E 's/^import ([a-z_]+_pb2)( as [A-Za-z0-9_]+)?$/from . import \1\2/' "$out"/*_pb2*.py "$out"/*_pb2.pyi
echo "generated: $(ls "$out"/*_pb2*.py* | tr '\n' ' ')"
