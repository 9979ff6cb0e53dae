#!/usr/bin/env bash
# Run postman_collection.json with newman against the live service under gunicorn.
#
#   scripts/postman.sh [extra newman options, e.g. --reporters cli,junit]
#
# Uses DATABASE_URL and REDIS_URL from the environment when set (e.g. PostgreSQL + Redis in
# CI), else a temporary SQLite file. Users get a random suffix, so a shared database with rows
# from earlier runs (or from the test suite) never collides. The exit code is newman's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV_BIN=${VENV_BIN:-.venv/bin}
PYTHON="$VENV_BIN/python"
FLASK=("$VENV_BIN/flask" --app flask_api)
NEWMAN=node_modules/.bin/newman
START_TIMEOUT_SECONDS=30

for tool in "$PYTHON" "$VENV_BIN/flask" "$VENV_BIN/gunicorn"; do
    [[ -x "$tool" ]] || { echo "postman.sh: $tool not found; run 'make venv' first" >&2; exit 2; }
done
if [[ ! -x "$NEWMAN" ]]; then
    echo "postman.sh: installing newman (npm ci)"
    npm ci --no-audit --no-fund
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/security-api-postman.XXXXXX")
server_pid=""
newman_pid=""

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
    if [[ -n "$newman_pid" ]]; then
        kill -TERM "$newman_pid" 2>/dev/null || true
        wait "$newman_pid" 2>/dev/null || true
    fi
    stop_server
    if [[ -n "$pg_schema" ]]; then
        pg_schema_url drop "$pg_admin_url" "$pg_schema" || true
    fi
    if [[ $status -ne 0 && -s "$workdir/gunicorn.log" ]]; then
        echo "--- gunicorn log (last 60 lines) ---" >&2
        tail -n 60 "$workdir/gunicorn.log" >&2
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_schema=""
pg_admin_url=""

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

# ---- configuration of the service under test ------------------------------------------------
run_id=$(random token_hex 4)
export SECURITY_API_ENV=testing
# Every worker must sign with the same secret: never let testing mode make one per process.
JWT_SECRET=$(random token_urlsafe 48)
export JWT_SECRET
# Likewise one key for the secrets kept encrypted at rest (TOTP seeds): a Fernet key.
DATA_ENCRYPTION_KEYS=$("$PYTHON" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
export DATA_ENCRYPTION_KEYS
export DATABASE_URL=${DATABASE_URL:-"sqlite:///$workdir/db.sqlite3"}
if [[ "$DATABASE_URL" == postgresql* ]]; then
    # A schema of its own, dropped at the end: no leftovers from other runs can interfere.
    pg_schema="postman_$run_id"
    pg_admin_url=$DATABASE_URL
    DATABASE_URL=$(pg_schema_url create "$pg_admin_url" "$pg_schema")
    export DATABASE_URL
fi
if [[ -n "${REDIS_URL:-}" ]]; then
    export REDIS_URL
    # A namespace of its own: no counters shared with other runs or the test suite.
    export REDIS_PREFIX="postman:$run_id:"
    redis_configured=true
else
    unset REDIS_URL
    redis_configured=false
fi
export BCRYPT_ROUNDS=4
# The collection sends ~50 sign-in requests from one address within a minute.
export AUTH_RATE_LIMIT=1000
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export GUNICORN_BIND="127.0.0.1:$port"
# Metrics on, behind a scraper token; workers add up in a directory of this run.
export METRICS_ENABLED=true
METRICS_TOKEN=$(random token_urlsafe 32)
export METRICS_TOKEN
export PROMETHEUS_MULTIPROC_DIR="$workdir/metrics"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
export WEB_CONCURRENCY=2
base_url="http://127.0.0.1:$port"

echo "postman.sh: database ${DATABASE_URL%%:*}, redis $redis_configured, run $run_id, $base_url"

# ---- database and users --------------------------------------------------------------------
person_username="pm-person-$run_id"
person_password="Tidal:$(random token_urlsafe 18)"      # a ':' in a password must work
changer_username="pm-changer-$run_id"
changer_password=$(random token_urlsafe 18)
changer_new_password=$(random token_urlsafe 18)
service_username="pm-service-$run_id"
service_password=$(random token_urlsafe 32)
approver_username="pm-approver-$run_id"
approver_password=$(random token_urlsafe 18)
admin_username="pm-admin-$run_id"
admin_password=$(random token_urlsafe 18)

"${FLASK[@]}" init-db
"${FLASK[@]}" create-role developer --subrole backend
"${FLASK[@]}" create-role tools --subrole ci
printf '%s\n' "$person_password" | "${FLASK[@]}" create-user "$person_username" \
    --role developer --subrole backend --email "$person_username@example.test" --password-stdin
printf '%s\n' "$changer_password" | "${FLASK[@]}" create-user "$changer_username" \
    --role developer --subrole backend --password-stdin
printf '%s\n' "$service_password" | "${FLASK[@]}" create-user "$service_username" \
    --role tools --subrole ci --service --password-stdin
# Access requests: security/lead approves; the person requests; the service account checks.
"${FLASK[@]}" create-role security --subrole lead
printf '%s\n' "$approver_password" | "${FLASK[@]}" create-user "$approver_username" \
    --role security --subrole lead --email "$approver_username@example.test" --password-stdin
# Administration: security/admin (made by init-db) holds security-api.admin and .audit standing.
printf '%s\n' "$admin_password" | "${FLASK[@]}" create-user "$admin_username" \
    --role security --subrole admin --email "$admin_username@example.test" --password-stdin
"${FLASK[@]}" create-permission vpn --name "VPN access" --max-duration-minutes 480
"${FLASK[@]}" create-rule vpn --role '*' --subrole '*' --mode auto
"${FLASK[@]}" create-permission prod-db-readonly --name "Production database (read-only)" \
    --max-duration-minutes 120 --requires-justification
"${FLASK[@]}" create-rule prod-db-readonly --role developer --subrole '*' --mode approval \
    --approver security/lead
"${FLASK[@]}" create-rule security-api.check --role tools --subrole ci --mode standing

# ---- service ---------------------------------------------------------------------------------
"$VENV_BIN/gunicorn" -c gunicorn.conf.py flask_api:application \
    >"$workdir/gunicorn.log" 2>&1 &
server_pid=$!

"$PYTHON" - "$base_url/v1/ping" "$server_pid" "$START_TIMEOUT_SECONDS" <<'EOF'
import os, sys, time, urllib.request
url, pid, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("postman.sh: gunicorn exited before answering")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"postman.sh: no answer from {url}")
EOF

# ---- collection ------------------------------------------------------------------------------
started=$SECONDS
# In the background and waited for, so an INT or TERM stops the run at once (bash runs traps
# only between commands, and `wait` is interruptible).
"$NEWMAN" run postman_collection.json \
    --env-var "baseUrl=$base_url" \
    --env-var "person_username=$person_username" \
    --env-var "person_password=$person_password" \
    --env-var "changer_username=$changer_username" \
    --env-var "changer_password=$changer_password" \
    --env-var "changer_new_password=$changer_new_password" \
    --env-var "service_username=$service_username" \
    --env-var "service_password=$service_password" \
    --env-var "approver_username=$approver_username" \
    --env-var "approver_password=$approver_password" \
    --env-var "admin_username=$admin_username" \
    --env-var "admin_password=$admin_password" \
    --env-var "run_id=$run_id" \
    --env-var "metrics_token=$METRICS_TOKEN" \
    --env-var "redis_configured=$redis_configured" \
    --timeout-request 15000 \
    --timeout 150000 \
    "$@" &
newman_pid=$!
set +e
wait "$newman_pid"
newman_status=$?
set -e
newman_pid=""
echo "postman.sh: newman finished in $((SECONDS - started)) s with exit code $newman_status"
exit "$newman_status"
