#!/usr/bin/env bash
# Run postman_collection.json with newman against the live service under gunicorn.
#
#   scripts/postman.sh [extra newman options, e.g. --reporters cli,junit]
#   scripts/postman.sh --serve   # set up the same service, write a Postman environment file
#                                # for the Postman app, and serve until Ctrl-C (no newman)
#
# The collection is written for the service set up here (its catalog, users, /metrics behind
# a token), not for `make run`'s demo organisation (other durations, /metrics off).
# Uses DATABASE_URL and REDIS_URL from the environment when set (e.g. PostgreSQL + Redis in
# CI), else a temporary SQLite file. Users get a random suffix, so a shared database with rows
# from earlier runs (or from the test suite) never collides. The exit code is newman's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

service_name=postman
# shellcheck source=scripts/lib/service.sh
source scripts/lib/service.sh
NEWMAN=node_modules/.bin/newman

serve_only=false
if [[ "${1:-}" == "--serve" ]]; then
    serve_only=true
    shift
fi

if [[ "$serve_only" == false && ! -x "$NEWMAN" ]]; then
    echo "postman.sh: installing newman (npm ci)"
    npm ci --no-audit --no-fund
fi

# ---- configuration of the service under test ------------------------------------------------
service_configure
# The collection sends ~50 sign-in requests from one address within a minute.
export AUTH_RATE_LIMIT=1000
# Slack interactions: the collection signs its bodies with this secret (no bot token: nothing
# is posted, no Slack is reachable); the approver is the Slack member slack_user_id.
SLACK_SIGNING_SECRET=$(random token_urlsafe 32)
export SLACK_SIGNING_SECRET
slack_user_id="UPM${run_id^^}"
service_enable_metrics

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
service_catalog security/lead
"${FLASK[@]}" slack-link "$approver_username" "$slack_user_id"

# ---- service ---------------------------------------------------------------------------------
service_start

# ---- collection ------------------------------------------------------------------------------
variables=(
    "baseUrl=$base_url"
    "person_username=$person_username" "person_password=$person_password"
    "changer_username=$changer_username" "changer_password=$changer_password"
    "changer_new_password=$changer_new_password"
    "service_username=$service_username" "service_password=$service_password"
    "approver_username=$approver_username" "approver_password=$approver_password"
    "admin_username=$admin_username" "admin_password=$admin_password"
    "run_id=$run_id" "metrics_token=$METRICS_TOKEN" "redis_configured=$redis_configured"
    "slack_signing_secret=$SLACK_SIGNING_SECRET" "slack_user_id=$slack_user_id"
)

if [[ "$serve_only" == true ]]; then
    environment="$workdir/security-api.postman_environment.json"
    "$PYTHON" - "$environment" "${variables[@]}" <<'EOF'
import json, sys
path, pairs = sys.argv[1], [pair.split("=", 1) for pair in sys.argv[2:]]
with open(path, "w") as out:
    json.dump({"name": "security-api (postman.sh --serve)", "values": [
        {"key": key, "value": value, "enabled": True} for key, value in pairs]}, out, indent=2)
EOF
    echo "postman.sh: serving $base_url; import postman_collection.json and the environment"
    echo "postman.sh:   $environment"
    echo "postman.sh: into the Postman app and run the collection once; Ctrl-C stops the service"
    echo "postman.sh: (and deletes the environment file and the database)."
    wait "$server_pid" || true   # interrupted by Ctrl-C (the trap stops the service)
    exit 0
fi

env_args=()
for pair in "${variables[@]}"; do
    env_args+=(--env-var "$pair")
done
started=$SECONDS
newman_status=0
# --timeout bounds the whole run: about 210 s of it now, most of that the pre-request scripts
# waiting for fresh TOTP steps (step-up and break-glass spend a code each); 8 minutes leaves room
# on a loaded machine, and a hang still fails.
run_client "$NEWMAN" run postman_collection.json "${env_args[@]}" \
    --timeout-request 15000 \
    --timeout 480000 \
    "$@" || newman_status=$?
echo "postman.sh: newman finished in $((SECONDS - started)) s with exit code $newman_status"
exit "$newman_status"
