#!/usr/bin/env bash
# Local etcd + NATS for a multi-process Ferrite cluster on loopback.
#
#   cluster.sh install   apt-get install etcd-server nats-server (if missing)
#   cluster.sh start     start both on free loopback ports; prints `export FERRITE_...` lines
#   cluster.sh env       print the export lines again
#   cluster.sh status    say whether both are running
#   cluster.sh stop      kill both and delete their data
#
# Usage: eval "$(infra/deploy/cluster.sh start)"
# State (pids, env, data dir) lives in $FERRITE_CLUSTER_STATE (default /tmp/ferrite-cluster-$UID).
set -euo pipefail

STATE="${FERRITE_CLUSTER_STATE:-/tmp/ferrite-cluster-$(id -u)}"
ETCD_BIN="${FERRITE_ETCD_BIN:-etcd}"
NATS_BIN="${FERRITE_NATS_BIN:-nats-server}"

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
bin_path() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free loopback port not in the list given as arguments.
free_port() {
    local p tries=0
    while :; do
        p=$(( 20000 + RANDOM % 40000 ))
        case " $* " in *" $p "*) continue ;; esac
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
        tries=$((tries + 1))
        [ "$tries" -lt 200 ] || die "no free port found"
    done
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

etcd_healthy() { curl -sf --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q '"health":"true"'; }

nats_healthy() { # the server greets every connection with an INFO line
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        read -r -t 1 line <&3 || exit 1
        [[ "$line" == INFO* ]]
    ) 2>/dev/null
}

wait_for() { # what timeout_s command...
    local what=$1 timeout=$2; shift 2
    local deadline=$(( SECONDS + timeout ))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

cmd_install() {
    if have "$ETCD_BIN" && have "$NATS_BIN"; then
        log "etcd and nats-server already installed"; return 0
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo apt-get install -y etcd-server nats-server
}

read_state() {
    ETCD_PID=""; NATS_PID=""; DATA=""
    # shellcheck disable=SC1091
    [ -f "$STATE/state" ] && . "$STATE/state"
    return 0
}

cmd_env() {
    [ -f "$STATE/env" ] || die "no cluster running (run: $0 start)"
    cat "$STATE/env"
}

cmd_status() {
    read_state
    if alive "$ETCD_PID" && alive "$NATS_PID"; then
        log "running: etcd pid $ETCD_PID, nats-server pid $NATS_PID, data $DATA"; cat "$STATE/env"
    else
        log "not running"; return 1
    fi
}

cmd_start() {
    read_state
    if alive "$ETCD_PID" && alive "$NATS_PID"; then
        log "already running (etcd pid $ETCD_PID, nats pid $NATS_PID)"; cmd_env; return 0
    fi
    if alive "$ETCD_PID" || alive "$NATS_PID"; then cmd_stop; fi
    have "$ETCD_BIN" || die "etcd not found: apt-get install -y etcd-server (or: $0 install)"
    have "$NATS_BIN" || die "nats-server not found: apt-get install -y nats-server (or: $0 install)"

    mkdir -p "$STATE"
    DATA=$(mktemp -d "${TMPDIR:-/tmp}/ferrite-cluster.XXXXXX")
    local cport pport nport
    cport=$(free_port)
    pport=$(free_port "$cport")
    nport=$(free_port "$cport" "$pport")

    nohup "$(bin_path "$ETCD_BIN")" --name default --data-dir "$DATA/etcd" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "default=http://127.0.0.1:$pport" >"$DATA/etcd.log" 2>&1 </dev/null &
    ETCD_PID=$!
    # 8 MB messages (NATS's default is 1 MB): requests with precomputed prompt embeddings
    # carry their rows (Llama-8B: 16 KB a row); larger requests get a 413.
    printf 'max_payload: %s\n' "${FERRITE_NATS_MAX_PAYLOAD:-8MB}" >"$DATA/nats.conf"
    nohup "$(bin_path "$NATS_BIN")" -c "$DATA/nats.conf" -a 127.0.0.1 -p "$nport" >"$DATA/nats.log" 2>&1 </dev/null &
    NATS_PID=$!
    cat >"$STATE/state" <<STATE_EOF
ETCD_PID=$ETCD_PID
NATS_PID=$NATS_PID
DATA=$DATA
STATE_EOF

    if ! wait_for etcd 15 etcd_healthy "$cport"; then
        tail -n 20 "$DATA/etcd.log" >&2; cmd_stop; die "etcd did not become healthy"
    fi
    if ! wait_for nats 10 nats_healthy "$nport"; then
        tail -n 20 "$DATA/nats.log" >&2; cmd_stop; die "nats-server did not become healthy"
    fi
    cat >"$STATE/env" <<ENV_EOF
export FERRITE_ETCD=http://127.0.0.1:$cport
export FERRITE_NATS=nats://127.0.0.1:$nport
ENV_EOF
    log "etcd pid $ETCD_PID on :$cport, nats-server pid $NATS_PID on :$nport, logs in $DATA"
    cat "$STATE/env"
}

stop_pid() {
    local pid=$1
    alive "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
    read_state
    stop_pid "$ETCD_PID"
    stop_pid "$NATS_PID"
    if [ -n "$DATA" ] && [ -d "$DATA" ]; then
        case "$DATA" in */ferrite-cluster.*) rm -rf "$DATA" ;; esac
    fi
    rm -f "$STATE/state" "$STATE/env"
    log "stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
