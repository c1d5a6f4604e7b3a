# Sourced by the bench-*.sh scripts: the ferrite binary (built in release if missing),
# a private etcd + NATS on free loopback ports, cleanup of every started process on exit,
# and small helpers. Sets BIN, STATE, pids.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=${FERRITE_BIN:-target/release/ferrite}
[ -x "$BIN" ] || cargo build --release -p ferrite
MODELS=${FERRITE_TEST_MODELS:-../shared/models}
STATE=$(mktemp -d)
export FERRITE_CLUSTER_STATE="$STATE"
eval "$(infra/deploy/cluster.sh start)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; infra/deploy/cluster.sh stop >/dev/null 2>&1 || true; rm -rf "$STATE"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_model PORT NAME: until the frontend on PORT lists model NAME (60 s at most).
wait_model() {
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/v1/models" 2>/dev/null | grep -q "\"$2\"" && return 0; sleep 0.2
  done
  echo "model $2 never appeared on port $1" >&2; return 1
}
