#!/usr/bin/env bash
# Fuzz the live service under gunicorn with schemathesis, using its own /v1/openapi.json.
#
#   scripts/fuzz.sh [extra `schemathesis run` options, e.g. --seed 1 or --max-examples 50]
#
# Uses DATABASE_URL and REDIS_URL from the environment when set (e.g. PostgreSQL + Redis in
# CI), else a temporary SQLite file. Checks and exclusions live in scripts/schemathesis.toml,
# credentials per operation in scripts/lib/fuzz_hooks.py. Exits non-zero on any finding.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

service_name=fuzz
# shellcheck source=scripts/lib/service.sh
source scripts/lib/service.sh
SCHEMATHESIS="$VENV_BIN/schemathesis"
[[ -x "$SCHEMATHESIS" ]] || { echo "fuzz.sh: $SCHEMATHESIS not found; pip install -r requirements-dev.txt" >&2; exit 2; }

# ---- configuration of the service under test ------------------------------------------------
service_configure
# Every test case of the Basic operations is a sign-in attempt from one address.
export AUTH_RATE_LIMIT=1000000
# The Slack interactions route then checks signatures for real (every fuzzed body fails them).
SLACK_SIGNING_SECRET=$(random token_urlsafe 32)
export SLACK_SIGNING_SECRET
service_enable_metrics

# ---- database and users --------------------------------------------------------------------
admin_username="fz-admin-$run_id"
admin_password=$(random token_urlsafe 18)
basic_username="fz-basic-$run_id"
basic_password=$(random token_urlsafe 18)
logout_username="fz-logout-$run_id"
logout_secret=$(random token_urlsafe 32)
password_username="fz-password-$run_id"
password_secret=$(random token_urlsafe 32)
requester_username="fz-requester-$run_id"
requester_password=$(random token_urlsafe 18)

# cli NAME ARGS...: run a CLI command, show its output, and keep it in $workdir/NAME.out.
cli() {
    local name=$1; shift
    "${FLASK[@]}" "$@" | tee "$workdir/$name.out"
}
# last_id NAME: the last UUID a CLI command printed.
last_id() { grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$workdir/$1.out" | tail -n 1; }

"${FLASK[@]}" init-db
"${FLASK[@]}" create-role developer --subrole backend
"${FLASK[@]}" create-role tools --subrole ci
# Administration: security/admin (made by init-db) holds security-api.admin and .audit standing.
printf '%s\n' "$admin_password" | cli admin create-user "$admin_username" \
    --role security --subrole admin --email "$admin_username@example.test" --password-stdin
printf '%s\n' "$basic_password" | cli basic create-user "$basic_username" \
    --role developer --subrole backend --password-stdin
printf '%s\n' "$logout_secret" | cli logout create-user "$logout_username" \
    --role tools --subrole ci --service --password-stdin
printf '%s\n' "$password_secret" | cli password create-user "$password_username" \
    --role tools --subrole ci --service --password-stdin
printf '%s\n' "$requester_password" | cli requester create-user "$requester_username" \
    --role developer --subrole backend --password-stdin
# What the request operations act on (scripts/lib/fuzz_requests.py): approval by the admin.
for permission in fz-approve fz-deny fz-cancel; do
    "${FLASK[@]}" create-permission "$permission" --name "Fuzzing: $permission" --max-duration-minutes 60
    "${FLASK[@]}" create-rule "$permission" --role developer --subrole backend --mode approval \
        --approver security/admin
done
# Decoys: admin operations aimed at the accounts above or at the built-in rules and permissions
# hit these instead (scripts/lib/fuzz_hooks.py).
random token_urlsafe 18 | cli decoy-user create-user "fz-decoy-$run_id" \
    --role developer --subrole backend --password-stdin
"${FLASK[@]}" create-permission fz-decoy --name "Decoy" --max-duration-minutes 60
cli decoy-rule create-rule fz-decoy --role developer --subrole backend --mode auto
export FUZZ_PROTECTED_USER_IDS="$(last_id admin) $(last_id basic) $(last_id logout) $(last_id password) $(last_id requester)"
export FUZZ_DECOY_USER_ID=$(last_id decoy-user) FUZZ_DECOY_RULE_ID=$(last_id decoy-rule)
export FUZZ_PROTECTED_PERMISSIONS="security-api.admin security-api.audit security-api.check fz-approve fz-deny fz-cancel"
export FUZZ_DECOY_PERMISSION=fz-decoy
# Something to find: an auto-granted and an approval permission, and the check permission.
service_catalog security/admin

# ---- service and tokens ----------------------------------------------------------------------
service_start

export FUZZ_BASE_URL=$base_url FUZZ_METRICS_TOKEN=$METRICS_TOKEN
export FUZZ_BASIC_USERNAME=$basic_username FUZZ_BASIC_PASSWORD=$basic_password
export FUZZ_LOGOUT_USERNAME=$logout_username FUZZ_LOGOUT_SECRET=$logout_secret
FUZZ_ADMIN_TOKEN=$(printf '%s\n' "$admin_password" \
    | "$PYTHON" scripts/lib/signin.py person "$base_url" "$admin_username")
FUZZ_PASSWORD_TOKEN=$(printf '%s\n' "$password_secret" \
    | "$PYTHON" scripts/lib/signin.py service "$base_url" "$password_username")
FUZZ_REQUESTER_TOKEN=$(printf '%s\n' "$requester_password" \
    | "$PYTHON" scripts/lib/signin.py person "$base_url" "$requester_username")
export FUZZ_ADMIN_TOKEN FUZZ_PASSWORD_TOKEN FUZZ_REQUESTER_TOKEN
# The request operations' targets (FUZZ_*_REQUEST_ID), named in scripts/schemathesis.toml.
requests_out=$(printf '%s\n' "$FUZZ_REQUESTER_TOKEN" | "$PYTHON" scripts/lib/fuzz_requests.py "$base_url")
echo "$requests_out"
while IFS='=' read -r variable value; do
    export "$variable=$value"
done <<< "$requests_out"
# Every rule that exists now except the decoy: the admin's own standing rules among them.
FUZZ_PROTECTED_RULE_IDS=$("$PYTHON" -c '
import os, sys, requests
rules = requests.get(sys.argv[1] + "/v1/admin/policies", timeout=15,
                     headers={"Authorization": "Bearer " + os.environ["FUZZ_ADMIN_TOKEN"]}).json()
print(" ".join(rule["id"] for rule in rules["policies"] if rule["id"] != os.environ["FUZZ_DECOY_RULE_ID"]))
' "$base_url")
export FUZZ_PROTECTED_RULE_IDS

# ---- schemathesis ----------------------------------------------------------------------------
started=$SECONDS
fuzz_status=0
run_client "$SCHEMATHESIS" --config-file scripts/schemathesis.toml run \
    --report junit --report-dir "${FUZZ_REPORT_DIR:-$workdir/report}" \
    "$base_url/v1/openapi.json" "$@" || fuzz_status=$?
echo "fuzz.sh: schemathesis finished in $((SECONDS - started)) s with exit code $fuzz_status"
exit "$fuzz_status"
