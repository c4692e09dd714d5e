#!/usr/bin/env bash
# A two-node Ray cluster on this machine, addressed on 127.0.0.1: a head (GCS,
# dashboard and job server, no GPU) and a worker node with its own temp dir, the same
# shape as deploy/kuberay/raycluster.yaml. For trying `ray job submit`, multi-node
# scheduling and actor restarts without Kubernetes.
#
# Ray resolves 127.0.0.1 to this machine's own address for its internal node records,
# and its GCS and raylets listen on every interface whatever the flags; the dashboard
# and job server listen on 127.0.0.1 only. So the cluster uses Ray's token
# authentication (recent Ray; older versions ignore the variables) with a token of its own in
# DIR/auth_token, which clients name with RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${RAY_LOCAL_PORT:-6380}"
DASHBOARD_PORT="${RAY_LOCAL_DASHBOARD_PORT:-8265}"
HEAD_CPUS="${RAY_LOCAL_HEAD_CPUS:-1}"
WORKER_CPUS="${RAY_LOCAL_WORKER_CPUS:-2}"
OBJECT_STORE_BYTES="${RAY_LOCAL_OBJECT_STORE_BYTES:-536870912}"   # 512 MiB a node
DIR="${RAY_LOCAL_DIR:-/tmp/reid-factory-ray}"
PYTHON="${PYTHON:-python3}"

usage() {
    cat <<EOF
usage: deploy/local_cluster.sh {start|stop|status|submit-command} [options]

  start            start the head and one worker node on 127.0.0.1
  stop             stop those two nodes (only them; \`ray stop\` would stop every
                   Ray of this user on the machine)
  status           \`ray status\` for this cluster
  submit-command   print the \`ray job submit\` command for jobs/specs/demo.yaml

options (or the environment variable in brackets):
  --port P             head's GCS port; P+1 its Ray Client  [RAY_LOCAL_PORT, $PORT]
  --dashboard-port D   dashboard and job server port        [RAY_LOCAL_DASHBOARD_PORT, $DASHBOARD_PORT]
  --head-cpus N        logical CPUs of the head             [RAY_LOCAL_HEAD_CPUS, $HEAD_CPUS]
  --worker-cpus M      logical CPUs of the worker           [RAY_LOCAL_WORKER_CPUS, $WORKER_CPUS]
  --dir DIR            temp dirs, logs, pid files, token    [RAY_LOCAL_DIR, $DIR]

Needs \`ray\` on PATH (the venv with \`pip install -e .\`). The head gets no GPU, as on
Kubernetes; the worker takes whatever GPUs Ray detects. Clients (\`ray job submit\`,
\`ray status\`) need the cluster's token: the printed commands name it.
EOF
}

die() { echo "local_cluster.sh: $*" >&2; exit 2; }

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

# The process group of a node we started, if its processes are still ours and alive.
live_group() {
    local pidfile="$DIR/$1.pgid" pgid
    [[ -f "$pidfile" ]] || return 1
    pgid="$(cat "$pidfile")"
    is_int "$pgid" || return 1
    pgrep -g "$pgid" -f -- "$DIR/$1" >/dev/null 2>&1 || return 1
    echo "$pgid"
}

# Run `ray start ...` as the leader of a new session, so that the daemons it leaves
# behind share one process group, recorded for `stop`.
start_node() {
    local name="$1"; shift
    mkdir -p "$DIR/$name"
    if ! "$PYTHON" - "$DIR/$name.pgid" "$@" >"$DIR/$name.log" 2>&1 <<'PY'
import os, sys
os.setsid()
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execvp(sys.argv[2], sys.argv[2:])
PY
    then
        echo "local_cluster.sh: ray start ($name) failed; its output:" >&2
        tail -n 20 "$DIR/$name.log" >&2
        return 1
    fi
}

stop_group() {
    local name="$1" pgid
    if ! pgid="$(live_group "$name")"; then
        rm -f "$DIR/$name.pgid"
        return 0
    fi
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 40); do                       # up to 10 s to exit cleanly
        pgrep -g "$pgid" >/dev/null 2>&1 || break
        sleep 0.25
    done
    if pgrep -g "$pgid" >/dev/null 2>&1; then
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pgid"
    echo "stopped the $name node (process group $pgid)"
}

auth_env() { echo "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$DIR/auth_token"; }

submit_command() {
    cat <<EOF
# the demo spec (tiny preset, world:// identities, a local folder) on this cluster:
cd $REPO && $(auth_env) ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . --submission-id demo -- python jobs/generate.py jobs/specs/demo.yaml --out $REPO/runs/demo-cluster
# then:
factory verify $REPO/runs/demo-cluster && factory stats $REPO/runs/demo-cluster
# interrupted? the same command with --resume and a new --submission-id (an id is used once per cluster)
EOF
}

cmd="${1:-}"
[[ -n "$cmd" ]] || { usage >&2; exit 2; }
shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="${2:?--dashboard-port needs a value}"; shift 2 ;;
        --head-cpus) HEAD_CPUS="${2:?--head-cpus needs a value}"; shift 2 ;;
        --worker-cpus) WORKER_CPUS="${2:?--worker-cpus needs a value}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
for value in "$PORT" "$DASHBOARD_PORT" "$HEAD_CPUS" "$WORKER_CPUS" "$OBJECT_STORE_BYTES"; do
    is_int "$value" || die "not a whole number: $value"
done
[[ "$DIR" = /* ]] || DIR="$PWD/$DIR"

case "$cmd" in
    start)
        command -v ray >/dev/null || die "ray is not on PATH (activate the venv that has \`pip install -e .\`)"
        command -v "$PYTHON" >/dev/null || die "$PYTHON is not on PATH (set PYTHON)"
        if live_group head >/dev/null || live_group worker >/dev/null; then
            die "a cluster from $DIR is running; \`deploy/local_cluster.sh stop\` first"
        fi
        export RAY_USAGE_STATS_ENABLED=0
        # A token for this cluster only, readable by this user only.
        mkdir -p "$DIR" && chmod 700 "$DIR"
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$DIR/auth_token")
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
        # Job entrypoints run in the directory `ray start` ran in: the repository.
        cd "$REPO"
        # Each node's agents take free ports (0) instead of Ray's fixed defaults (52365,
        # ...), and the head's Ray Client server PORT+1 instead of 10001, so that the
        # two nodes, or another Ray on this machine, do not collide.
        agent_ports=(--dashboard-agent-listen-port 0 --dashboard-agent-grpc-port 0
                     --metrics-export-port 0 --runtime-env-agent-port 0)
        start_node head ray start --head --node-ip-address 127.0.0.1 --port "$PORT" \
            --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
            --ray-client-server-port "$((PORT + 1))" "${agent_ports[@]}" \
            --num-cpus "$HEAD_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
            --temp-dir "$DIR/head" --disable-usage-stats
        # The second node on the same machine, with a temp dir of its own.
        if ! start_node worker ray start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 \
            "${agent_ports[@]}" \
            --num-cpus "$WORKER_CPUS" --object-store-memory "$OBJECT_STORE_BYTES" \
            --temp-dir "$DIR/worker" --disable-usage-stats; then
            stop_group head
            exit 1
        fi
        echo "Ray cluster up: head 127.0.0.1:$PORT ($HEAD_CPUS CPU, no GPU) + worker ($WORKER_CPUS CPU);" \
             "dashboard http://127.0.0.1:$DASHBOARD_PORT; logs in $DIR"
        submit_command
        stop_hint="deploy/local_cluster.sh stop"
        if [[ "$DIR" != "/tmp/reid-factory-ray" ]]; then stop_hint+=" --dir $DIR"; fi
        echo "# stop it with: $stop_hint"
        ;;
    stop)
        # The worker first, so the head does not wait on a vanished node.
        stop_group worker
        stop_group head
        rm -f "$DIR/auth_token"
        ;;
    status)
        live_group head >/dev/null || die "no cluster from $DIR is running"
        RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token" ray status --address "127.0.0.1:$PORT"
        ;;
    submit-command)
        submit_command
        ;;
    -h|--help|help)
        usage
        ;;
    *)
        usage >&2
        die "unknown command $cmd"
        ;;
esac
