# Shared by scripts/postman.sh and scripts/fuzz.sh: run the service under gunicorn for a
# black-box client, and clean up whatever happens.
#
# Source it from the repository root after setting `service_name` (used in messages, the
# temporary directory, the PostgreSQL schema and the Redis prefix). Sourcing checks the tools,
# makes "$workdir" and installs the EXIT/INT/TERM traps. Then:
#   service_configure   exports the service's settings (see below) and picks a free port;
#   service_enable_metrics  turns /metrics on behind a random METRICS_TOKEN;
#   service_catalog A   creates the permissions and rules both runs exercise (approver A);
#   service_start       starts gunicorn and waits until /v1/ping answers;
#   run_client CMD...   runs the client in the background and returns its exit code, so an
#                       INT or TERM stops the run at once.
# Uses DATABASE_URL and REDIS_URL from the environment when set (e.g. PostgreSQL + Redis in
# CI), else a temporary SQLite file. PostgreSQL gets a schema of its own, dropped at the end.
# KEEP_WORKDIR=DIR copies the work directory (gunicorn log, reports) there before it goes.
# shellcheck shell=bash

: "${service_name:?set service_name before sourcing scripts/lib/service.sh}"

VENV_BIN=${VENV_BIN:-.venv/bin}
PYTHON="$VENV_BIN/python"
FLASK=("$VENV_BIN/flask" --app flask_api)
START_TIMEOUT_SECONDS=30

for tool in "$PYTHON" "$VENV_BIN/flask" "$VENV_BIN/gunicorn"; do
    [[ -x "$tool" ]] || { echo "$service_name.sh: $tool not found; run 'make venv' first" >&2; exit 2; }
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/security-api-$service_name.XXXXXX")
server_pid=""
client_pid=""
pg_schema=""
pg_admin_url=""

stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # gunicorn stops its idle workers at once; give it a few seconds before insisting.
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}

cleanup() {
    local status=$?
    trap - EXIT
    if [[ -n "$client_pid" ]]; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    stop_server
    if [[ -n "$pg_schema" ]]; then
        pg_schema_url drop "$pg_admin_url" "$pg_schema" || true
    fi
    if [[ $status -ne 0 && -s "$workdir/gunicorn.log" ]]; then
        echo "--- gunicorn log (last 60 lines) ---" >&2
        tail -n 60 "$workdir/gunicorn.log" >&2
    fi
    [[ -n "${KEEP_WORKDIR:-}" ]] && cp -r "$workdir" "$KEEP_WORKDIR"
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pg_schema_url create|drop URL SCHEMA: make or drop a schema; `create` prints the URL using it.
pg_schema_url() {
    "$PYTHON" - "$@" <<'EOF'
import sys
from sqlalchemy import create_engine, make_url, text
action, url, schema = sys.argv[1:]
engine = create_engine(url)
with engine.begin() as connection:
    if action == "create":
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    else:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
engine.dispose()
if action == "create":
    print(make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
          .render_as_string(hide_password=False))
EOF
}

random() { "$PYTHON" -c "import secrets, sys; print(secrets.$1(int(sys.argv[1])))" "$2"; }

# service_configure: export the settings of the service under test; sets run_id,
# redis_configured and base_url.
service_configure() {
    run_id=$(random token_hex 4)
    export SECURITY_API_ENV=testing
    # Every worker must sign with the same secret: never let testing mode make one per process.
    JWT_SECRET=$(random token_urlsafe 48)
    export JWT_SECRET
    # Likewise one key for the secrets kept encrypted at rest (TOTP seeds): a Fernet key.
    DATA_ENCRYPTION_KEYS=$("$PYTHON" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
    export DATA_ENCRYPTION_KEYS
    # And one audit chain key: the CLI's events and the workers' must verify as one chain.
    AUDIT_CHAIN_KEY=$(random token_urlsafe 48)
    export AUDIT_CHAIN_KEY
    export DATABASE_URL=${DATABASE_URL:-"sqlite:///$workdir/db.sqlite3"}
    if [[ "$DATABASE_URL" == postgresql* ]]; then
        # A schema of its own, dropped at the end: no leftovers from other runs can interfere.
        pg_schema="${service_name}_$run_id"
        pg_admin_url=$DATABASE_URL
        DATABASE_URL=$(pg_schema_url create "$pg_admin_url" "$pg_schema")
        export DATABASE_URL
    fi
    if [[ -n "${REDIS_URL:-}" ]]; then
        export REDIS_URL
        # A namespace of its own: no counters shared with other runs or the test suite.
        export REDIS_PREFIX="$service_name:$run_id:"
        redis_configured=true
    else
        unset REDIS_URL
        redis_configured=false
    fi
    export BCRYPT_ROUNDS=4
    local port
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export GUNICORN_BIND="127.0.0.1:$port"
    export WEB_CONCURRENCY=${WEB_CONCURRENCY:-2}
    base_url="http://127.0.0.1:$port"
    echo "$service_name.sh: database ${DATABASE_URL%%:*}, redis $redis_configured, run $run_id, $base_url"
}

# service_start: start gunicorn with the exported settings and wait for /v1/ping.
# service_enable_metrics: /metrics on, behind a random scraper token (exported as
# METRICS_TOKEN); the workers add up their numbers in a directory of this run.
service_enable_metrics() {
    export METRICS_ENABLED=true
    METRICS_TOKEN=$(random token_urlsafe 32)
    export METRICS_TOKEN
    export PROMETHEUS_MULTIPROC_DIR="$workdir/metrics"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
}

# service_catalog APPROVER: the permissions both runs exercise: vpn (auto for everyone),
# prod-db-readonly (developers, approved by APPROVER, e.g. security/lead), and the standing
# security-api.check of tools/ci.
service_catalog() {
    "${FLASK[@]}" create-permission vpn --name "VPN access" --max-duration-minutes 480
    "${FLASK[@]}" create-rule vpn --role '*' --subrole '*' --mode auto
    "${FLASK[@]}" create-permission prod-db-readonly --name "Production database (read-only)" \
        --max-duration-minutes 120 --requires-justification
    "${FLASK[@]}" create-rule prod-db-readonly --role developer --subrole '*' --mode approval \
        --approver "$1"
    "${FLASK[@]}" create-rule security-api.check --role tools --subrole ci --mode standing
}

service_start() {
    "$VENV_BIN/gunicorn" -c gunicorn.conf.py flask_api:application \
        >"$workdir/gunicorn.log" 2>&1 &
    server_pid=$!

    "$PYTHON" - "$base_url/v1/ping" "$server_pid" "$START_TIMEOUT_SECONDS" "$service_name" <<'EOF'
import os, sys, time, urllib.request
url, pid, deadline, name = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3]), sys.argv[4]
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"{name}.sh: gunicorn exited before answering")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"{name}.sh: no answer from {url}")
EOF
}

# run_client CMD...: run CMD in the background and wait for it (bash runs traps only between
# commands, and `wait` is interruptible); returns CMD's exit code.
run_client() {
    local status
    "$@" &
    client_pid=$!
    set +e
    wait "$client_pid"
    status=$?
    set -e
    client_pid=""
    return "$status"
}
