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

service_name=postman
# shellcheck source=scripts/lib/service.sh
source scripts/lib/service.sh
NEWMAN=node_modules/.bin/newman

if [[ ! -x "$NEWMAN" ]]; then
    echo "postman.sh: installing newman (npm ci)"
    npm ci --no-audit --no-fund
fi

# ---- configuration of the service under test ------------------------------------------------
service_configure
# The collection sends ~50 sign-in requests from one address within a minute.
export AUTH_RATE_LIMIT=1000
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

# ---- service ---------------------------------------------------------------------------------
service_start

# ---- collection ------------------------------------------------------------------------------
started=$SECONDS
newman_status=0
run_client "$NEWMAN" run postman_collection.json \
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
    "$@" || newman_status=$?
echo "postman.sh: newman finished in $((SECONDS - started)) s with exit code $newman_status"
exit "$newman_status"
