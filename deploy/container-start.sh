#!/bin/sh
# The image's command: load every configured model once (`--check`, one line each), then serve with gunicorn.
#
# When the check fails (a model file that is missing or broken, SAM settings that do not fit the checkpoint),
# the container says why and stays up without serving (unhealthy) instead of exiting: under a restart policy
# (compose's unless-stopped) an exit would be restarted, fail the same way, and loop. Fix the setting the
# message names, then restart the container. docker stop ends it at once.
cd "$(dirname "$0")/.." || exit 1
if python backend/_wsgi.py --check; then
    exec gunicorn -c backend/gunicorn.conf.py backend._wsgi:app
fi
echo "not serving: fix the setting named above, then restart the container (docker restart, or docker compose up -d)" >&2
trap 'kill "$sleeper" 2>/dev/null; exit 1' INT TERM
while :; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper"
done
