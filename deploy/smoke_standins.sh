# Stand-ins for the images deploy/smoke.sh needs where no image registry can be reached (sourced by it).
#
# - The Dockerfile's base: Debian bookworm (debootstrap), Python 3.11 in a venv at /opt/conda (where the
#   pytorch/pytorch images keep their Python, first on PATH), and torch + torchvision from pip.
# - Label Studio's image: the same Python with `pip install label-studio==<version>`, its data in
#   /label-studio/data, run as user 1001 on port 8080 like heartexlabs/label-studio.
#
# Each is built once and tagged with the real image's name, so the Dockerfile and docker-compose.yml are
# used unchanged; an image already present under that name (the real one, or an earlier stand-in) is
# used as it is. Settings (environment):
#   STANDIN_TORCH      pip requirements for the base's torch (default "torch==2.14.1 torchvision==0.29.1";
#                      CUDA builds work on CPU too; a CPU-only torch needs a CPU torchvision to match)
#   SMOKE_FIND_LINKS   a directory of wheels pip may take them from (served on loopback during the build)
#   SMOKE_CA_BUNDLE    the CA bundle pip needs to reach the package index (default: PIP_CERT, else the
#                      system bundle); copied into the stand-ins only, never into the project's image

STANDIN_DEBIAN=ls-yolo-sam-smoke/bookworm:12
STANDIN_PYTHON=ls-yolo-sam-smoke/bookworm-python:3.11
STANDIN_LABEL=org.ls-yolo-sam.smoke-standin

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build on the host network (no bridge here); the legacy builder, since buildx may be absent.
build_image() {  # TAG CONTEXT_DIR [docker build args...]; the output goes to $SMOKE_WORK/build-<tag>.log
    local tag=$1 context=$2 output="$SMOKE_WORK/build-${1//[\/:]/_}.log"
    shift 2
    if ! DOCKER_BUILDKIT=0 docker build --network host -t "$tag" "$@" "$context" >"$output" 2>&1; then
        tail -40 "$output" >&2
        return 1
    fi
}

standin_debian() {
    image_exists "$STANDIN_DEBIAN" && return
    local root="$SMOKE_WORK/debian-rootfs"
    log "debootstrap Debian bookworm (minbase + python3) for the stand-in base"
    rm -rf "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
        http://deb.debian.org/debian >"$SMOKE_WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $SMOKE_WORK/debootstrap.log)"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$STANDIN_DEBIAN" >/dev/null
    rm -rf "$root"
}

standin_python() {
    image_exists "$STANDIN_PYTHON" && return
    standin_debian
    local context="$SMOKE_WORK/python-context" bundle=${SMOKE_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
    log "Python 3.11 venv at /opt/conda (pip trusts $bundle, as on this host)"
    rm -rf "$context" && mkdir -p "$context"
    cp "$bundle" "$context/host-ca.crt"
    cat >"$context/Dockerfile" <<EOF
FROM $STANDIN_DEBIAN
COPY host-ca.crt /etc/ssl/smoke-host-ca.crt
ENV PIP_CERT=/etc/ssl/smoke-host-ca.crt PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/conda && pip install -q --upgrade pip
LABEL $STANDIN_LABEL=python
EOF
    build_image "$STANDIN_PYTHON" "$context"
}

# A loopback web server for SMOKE_FIND_LINKS (builds run on the host network); sets FIND_LINKS for pip.
start_wheel_server() {
    FIND_LINKS=
    [ -n "${SMOKE_FIND_LINKS:-}" ] || return 0
    local port
    port=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$SMOKE_FIND_LINKS" "$port" >/dev/null 2>&1 &
    WHEEL_SERVER_PID=$!
    sleep 1
    FIND_LINKS="--find-links http://127.0.0.1:$port/"
}

stop_wheel_server() {
    if [ -n "${WHEEL_SERVER_PID:-}" ]; then kill "$WHEEL_SERVER_PID" 2>/dev/null || true; fi
    WHEEL_SERVER_PID=
}

standin_base() {  # TAG: the Dockerfile's FROM image
    local tag=$1 context="$SMOKE_WORK/base-context" torch=${STANDIN_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
    image_exists "$tag" && return
    standin_python
    log "stand-in $tag: $torch"
    rm -rf "$context" && mkdir -p "$context"
    cat >"$context/Dockerfile" <<EOF
FROM $STANDIN_PYTHON
ARG TORCH
ARG FIND_LINKS
RUN pip install -q \$FIND_LINKS \$TORCH && python -c "import torch, torchvision"
LABEL $STANDIN_LABEL=base
EOF
    start_wheel_server
    build_image "$tag" "$context" --build-arg "TORCH=$torch" --build-arg "FIND_LINKS=$FIND_LINKS" \
        || { stop_wheel_server; die "the stand-in base did not build"; }
    stop_wheel_server
}

standin_label_studio() {  # TAG: heartexlabs/label-studio:<version>
    local tag=$1 version=${1##*:} context="$SMOKE_WORK/label-studio-context"
    image_exists "$tag" && return
    standin_python
    log "stand-in $tag: pip install label-studio==$version sentry-sdk<3"
    rm -rf "$context" && mkdir -p "$context"
    cat >"$context/Dockerfile" <<EOF
FROM $STANDIN_PYTHON
RUN pip install -q "label-studio==$version" "sentry-sdk<3" \
    && useradd --uid 1001 --create-home labelstudio && mkdir -p /label-studio/data \
    && chown -R 1001 /label-studio
ENV LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data
WORKDIR /label-studio
USER 1001
EXPOSE 8080
CMD ["label-studio", "start", "--no-browser", "--internal-host", "0.0.0.0", "--port", "8080"]
LABEL $STANDIN_LABEL=label-studio
EOF
    build_image "$tag" "$context" || die "the stand-in Label Studio image did not build"
}
