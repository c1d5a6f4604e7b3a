#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what is missing (etcd,
# NATS, protoc, UCX, curl, python3 with venv/pip for the `openai` client tests), builds the workspace once, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v nats-server >/dev/null || need+=(nats-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
# UCX for the KV transfer tests (loaded with dlopen; ucx_perftest for the benchmarks).
ldconfig -p 2>/dev/null | grep -q 'libucp\.so\.0' || [ -e /usr/lib/x86_64-linux-gnu/libucp.so.0 ] || need+=(libucx0)
command -v ucx_perftest >/dev/null || need+=(ucx-utils)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v pip3 >/dev/null || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# One-shot build: no incremental caches (they double the target folder's size).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export FERRITE_TEST_MODELS="${FERRITE_TEST_MODELS:-$(cd .. && pwd)/shared/models}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast
