#!/usr/bin/env bash
# Smoke test of the container as users run it: builds the image, then
#   1. inside it: one OpenCV (headless), cv2 and ultralytics import, the EXTRAS' packages, a non-root user;
#   2. `docker run` with no network and no model settings: healthy on the demo models (with the WARNING that
#      says so), one /predict on demo-shapes pictures and one SAM click (tiny demo SAM) checked against the
#      drawn shapes, basic auth required;
#   3. a missing model under `--restart unless-stopped`: one sentence naming the setting, no restarts;
#   4. docker-compose.yml with Label Studio (+ deploy/docker-compose.smoke.yml): the backend connected with
#      basic auth, predictions retrieved and stored, a click through Label Studio; the GPU file validates.
# The containers and volumes it starts are removed at the end; the images stay, so the next run reuses them.
# Needs root (or the docker group), docker, docker-compose (or the compose plugin), python3 with PyYAML, curl;
# debootstrap when the base image is not there (see deploy/smoke_standins.sh).
#
#   deploy/smoke.sh                    # every step: contents offline missing compose (or name some)
#   EXTRAS=sam2,sam-hq deploy/smoke.sh contents   # other extras than the Dockerfile's default
#
# Machines without a bridge network (dockerd --bridge=none --iptables=false): every build and container
# here uses the host's network or none; no network is created.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
SMOKE_WORK=${SMOKE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/ls-yolo-sam-smoke}
IMAGE=${SMOKE_IMAGE:-ls-yolo-sam-backend:smoke}
BASE_IMAGE=$(awk '/^FROM / {print $2; exit}' Dockerfile)
LS_IMAGE=$(awk '/image: heartexlabs\/label-studio:/ {print $2; exit}' docker-compose.yml)
# EXTRAS unset: the Dockerfile's default
BUILD_EXTRAS=${EXTRAS-$(sed -n 's/^ARG EXTRAS="\(.*\)"$/\1/p' Dockerfile)}
RUN_ID=ls-yolo-sam-smoke-$$
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
# docker-compose.yml without its port mappings (Compose refuses them on the host network), then the override.
COMPOSE_FILES=(--project-directory "$REPO" -f "$SMOKE_WORK/docker-compose.yml" -f deploy/docker-compose.smoke.yml)
STARTED_CONTAINERS=()
COMPOSE_UP=

log() { echo "[smoke $(date +%T)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
seconds_since() { echo $(( $(date +%s) - $1 )); }
gigabytes() { python3 -c "print(f'{($1) / 1e9:.2f}')"; }

# shellcheck source=deploy/smoke_standins.sh
. "$REPO/deploy/smoke_standins.sh"

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
compose() { "${COMPOSE[@]}" -p "$RUN_ID" "${COMPOSE_FILES[@]}" "$@"; }

cleanup() {
    local status=$?
    for name in "${STARTED_CONTAINERS[@]}"; do docker rm -f "$name" >/dev/null 2>&1 || true; done
    if [ -n "$COMPOSE_UP" ]; then compose down -v >/dev/null 2>&1 || true; fi
    stop_wheel_server
    [ "$status" = 0 ] && log "every check passed" || log "see the output above; work files in $SMOKE_WORK"
}
trap cleanup EXIT

wait_healthy() {  # CONTAINER SECONDS: waits for Docker's health status "healthy"
    local name=$1 limit=$2 started status
    started=$(date +%s)
    while [ "$(seconds_since "$started")" -lt "$limit" ]; do
        status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")
        case $status in
            "running healthy") return 0 ;;
            exited*|dead*) docker logs "$name" 2>&1 | tail -30 >&2; die "$name stopped ($status)" ;;
        esac
        sleep 2
    done
    docker logs "$name" 2>&1 | tail -30 >&2
    die "$name not healthy after $limit s"
}

# Each extra's requirements (pyproject.toml) are installed: EXTRAS=sam2,sam-hq -> sam2, segment-anything-hq, timm.
EXTRAS_CHECK='
import importlib.metadata as metadata, os, re
wanted = {e.strip() for e in os.environ["EXTRAS"].split(",") if e.strip()}
declared = set()
for requirement in metadata.requires("ls-yolo-sam-backend") or []:
    extra = re.search(r"extra == \W([\w.-]+)\W", requirement)
    if extra and extra.group(1) in wanted:
        declared.add(extra.group(1))
        name = re.match(r"[\w.-]+", requirement).group(0)
        print(f"extra {extra.group(1)}: {name} {metadata.version(name)}")
assert declared == wanted, f"not extras of pyproject.toml: {sorted(wanted - declared)}"
'
HEADLESS_CHECK='
import re, cv2, ultralytics
assert re.search(r"GUI:\s+NONE", cv2.getBuildInformation()), "cv2 is a GUI build"
print(f"cv2 {cv2.__version__} (no GUI), ultralytics {ultralytics.__version__}")
'

check_image_contents() {
    log "1. inside the image"
    local run=(docker run --rm --network none -e YOLO_VERBOSE=false --entrypoint) opencvs user
    "${run[@]}" python "$IMAGE" -c "$HEADLESS_CHECK" | sed 's/^/    /' >&2 || die "cv2 and ultralytics"
    "${run[@]}" python -e "EXTRAS=$BUILD_EXTRAS" "$IMAGE" -c "$EXTRAS_CHECK" | sed 's/^/    /' >&2 || die "the extras"
    opencvs=$("${run[@]}" pip "$IMAGE" list 2>/dev/null | grep -i '^opencv' || true)
    [ "$(echo "$opencvs" | wc -l)" = 1 ] && [[ $opencvs == opencv-python-headless* ]] \
        || die "OpenCV distributions installed: $opencvs (want opencv-python-headless alone)"
    docker run --rm --network none -e YOLO_VERBOSE=false --user root --entrypoint sh "$IMAGE" -c \
        'pip uninstall -y opencv-python >/dev/null 2>&1; python -c "import cv2, ultralytics"' \
        || die "after pip uninstall opencv-python, cv2 or ultralytics no longer import"
    user=$("${run[@]}" id "$IMAGE" -un)
    [ "$user" != root ] || die "the image runs as root"
    log "    one OpenCV: $opencvs (still there after pip uninstall opencv-python); runs as $user"
}

run_offline() {
    log "2. docker run offline (--network none), no model settings, MODEL_NAME=sam with demo-tiny-sam.pt"
    local name=$RUN_ID-offline started output
    started=$(date +%s)
    STARTED_CONTAINERS+=("$name")
    docker run -d --name "$name" --network none --health-interval 5s \
        -e BASIC_AUTH_USER=smoke -e "BASIC_AUTH_PASS=$PASSWORD" -e MODEL_NAME=sam \
        -e SAM_CHECKPOINT_FILE=demo-tiny-sam.pt -e LOCAL_FILES_DOCUMENT_ROOT=/tmp/smoke-pictures \
        -v "$REPO/deploy:/smoke:ro" "$IMAGE" >/dev/null
    wait_healthy "$name" 600
    log "    healthy after $(seconds_since "$started") s"
    output=$(docker logs "$name" 2>&1)
    grep -E "WARNING.*demo" <<<"$output" | sed 's/^/    /' >&2 || die "no WARNING naming the demo models in the log"
    grep "WARNING.*demo-shapes-det.pt" <<<"$output" >/dev/null || die "no WARNING naming demo-shapes-det.pt in the log"
    docker exec "$name" python /smoke/smoke_client.py backend --url http://127.0.0.1:9090 --auth "smoke:$PASSWORD" \
        --picture-dir /tmp/smoke-pictures | sed 's/^/    /' >&2 || die "the backend's answers"
    started=$(date +%s)
    docker stop "$name" >/dev/null
    log "    stopped in $(seconds_since "$started") s"
}

run_missing_model() {
    log "3. a missing model (YOLO_DET_MODEL=missing.pt) with --restart unless-stopped"
    local name=$RUN_ID-missing state output
    STARTED_CONTAINERS+=("$name")
    docker run -d --name "$name" --network none --restart unless-stopped -e YOLO_DET_MODEL=missing.pt "$IMAGE" >/dev/null
    sleep 30
    state=$(docker inspect -f '{{.State.Status}} restarts={{.RestartCount}}' "$name")
    output=$(docker logs "$name" 2>&1)
    grep -E "FAILED|not serving" <<<"$output" | sed 's/^/    /' >&2 || true
    [ "$state" = "running restarts=0" ] || die "after 30 s: $state (want running, no restarts)"
    grep "FAILED: YOLO_DET_MODEL.*missing.pt" <<<"$output" >/dev/null || die "the log does not name YOLO_DET_MODEL"
    log "    after 30 s: $state"
}

run_compose() {
    log "4. docker-compose.yml with Label Studio ($LS_IMAGE)"
    SMOKE_LS_PORT=$(free_port) SMOKE_BACKEND_PORT=$(free_port)
    SMOKE_LS_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    SMOKE_LS_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
    export SMOKE_LS_PORT SMOKE_BACKEND_PORT SMOKE_LS_PASSWORD SMOKE_LS_TOKEN SMOKE_IMAGE=$IMAGE BASIC_AUTH_PASS=$PASSWORD
    BASIC_AUTH_PASS=x "${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.gpu.yml config -q \
        || die "docker-compose.yml + docker-compose.gpu.yml do not validate"
    python3 - "$REPO" "$SMOKE_WORK/docker-compose.yml" <<'EOF' || die "cannot write the compose file without ports"
import sys, yaml
repo, out = sys.argv[1:]
compose = yaml.safe_load(open(f"{repo}/docker-compose.yml"))
for service in compose["services"].values():
    service.pop("ports", None)
    if isinstance(service.get("build"), dict):
        service["build"]["context"] = repo
open(out, "w").write(yaml.safe_dump(compose, sort_keys=False))
EOF
    local started backend
    started=$(date +%s)
    COMPOSE_UP=1
    compose up -d --no-build 2>&1 | sed 's/^/    /' >&2 || die "docker-compose up"
    backend=$(compose ps -q ml-backend)
    wait_healthy "$backend" 600
    log "    backend healthy $(seconds_since "$started") s after up"
    until curl -fsS "http://127.0.0.1:$SMOKE_LS_PORT/health" >/dev/null 2>&1; do
        [ "$(seconds_since "$started")" -lt 600 ] || die "Label Studio did not answer /health in 600 s"
        sleep 3
    done
    log "    Label Studio up $(seconds_since "$started") s after up"
    docker run --rm --network host -v "$REPO/deploy:/smoke:ro" "$IMAGE" python /smoke/smoke_client.py label-studio \
        --url "http://127.0.0.1:$SMOKE_LS_PORT" --token "$SMOKE_LS_TOKEN" \
        --backend-url "http://ml-backend:$SMOKE_BACKEND_PORT" --auth "labelstudio:$PASSWORD" | sed 's/^/    /' >&2 \
        || die "Label Studio with the backend"
}

docker info >/dev/null 2>&1 || die "no Docker daemon (here: dockerd --bridge=none --iptables=false &)"
mkdir -p "$SMOKE_WORK"
started=$(date +%s)
standin_base "$BASE_IMAGE"
standin_label_studio "$LS_IMAGE"
log "base images ready in $(seconds_since "$started") s"
started=$(date +%s)
build_image "$IMAGE" "$REPO" --build-arg "EXTRAS=$BUILD_EXTRAS" || die "docker build failed"
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE (EXTRAS=$BUILD_EXTRAS) in $(seconds_since "$started") s: $(gigabytes "$size") GB, \
$(gigabytes "$size - $base_size") GB above $BASE_IMAGE ($(gigabytes "$base_size") GB)"
steps=("${@:-contents offline missing compose}")
for step in ${steps[*]}; do
    case $step in
        contents) check_image_contents ;;
        offline) run_offline ;;
        missing) run_missing_model ;;
        compose) run_compose ;;
        *) die "unknown step '$step' (contents, offline, missing, compose)" ;;
    esac
done
