#!/usr/bin/env bash
# `make lock`: the one deliberate way to move dependency versions. Resolves pyproject.toml (and
# requirements/*.in) with `uv pip compile` into hash-pinned lock files under requirements/, one
# per environment, for CPython 3.11 on Linux x86_64. Every other lock is constrained by dev.txt,
# so a package shared by two environments has the same version in both; the CPU build of ONNX
# Runtime is pinned to the version of the GPU build the tests run.
#
# Without UPGRADE=1 the versions already locked are kept (only what pyproject.toml changed moves);
# with it, everything moves to the newest release that fits.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
out=requirements
compile=("$uv" pip compile --quiet --generate-hashes --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock")
if [[ "${UPGRADE:-0}" == 1 ]]; then compile+=(--upgrade); fi

# The development venv and CI: the GPU build of ONNX Runtime (it runs on the CPU where there is no
# GPU), the export side and the tools.
"${compile[@]}" pyproject.toml --extra gpu --extra export --extra dev -o "$out/dev.txt"

ort_version=$(sed -n 's/^onnxruntime-gpu==\([^ ]*\).*/\1/p' "$out/dev.txt")
same_ort=$(mktemp)
trap 'rm -f "$same_ort"' EXIT
echo "onnxruntime==$ort_version" >"$same_ort"
constrained=("${compile[@]}" -c "$out/dev.txt" -c "$same_ort")

"${constrained[@]}" pyproject.toml --extra cpu -o "$out/serve-cpu.txt"              # CPU serving image
"${constrained[@]}" pyproject.toml --extra gpu --extra cuda -o "$out/serve-gpu.txt"  # GPU serving image
"${constrained[@]}" pyproject.toml --extra cpu --extra export -o "$out/export.txt"   # export image
# What building the project's wheel needs ([build-system] requires), for the images' wheel stage.
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
    | "${constrained[@]}" - -o "$out/build.txt"
# Triton's client for the compose test: its protobuf pin is not ours, so no dev.txt constraint.
"${compile[@]}" "$out/tritonclient.in" -o "$out/tritonclient.txt"
# Triton's perf_analyzer binary (make perf-analyzer): the wheels alone, installed with --no-deps.
"${compile[@]}" --no-deps "$out/perf-analyzer.in" -o "$out/perf-analyzer.txt"

# The ONNX Runtime pin comes from a temporary file whose random name uv records; name it instead,
# so that relocking without changes leaves the files byte for byte as they were.
sed -i "s|-c $same_ort|-c onnxruntime pinned to the onnxruntime-gpu version of dev.txt|" "$out"/*.txt
