#!/usr/bin/env bash
# Start a local Docker engine without the default bridge and build the base images the tests build FROM.
# Idempotent: installs, starts and builds only what is missing. Timings go to stderr as "docker-up: <stage> <s>s".
set -euo pipefail
export DOCKER_BUILDKIT=0

BASE_IMAGE=${TAO_BASE_IMAGE:-tao-base:bookworm}
TORCH_IMAGE=${TAO_TORCH_IMAGE:-tao-base-torch:cpu}
TORCH_WHEEL=${TAO_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
DOCKERD_LOG=${TAO_DOCKERD_LOG:-/tmp/dockerd.log}
CA_BUNDLE=${TAO_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PY_PACKAGES=(transformers datasets accelerate scikit-learn pillow safetensors)

log() { echo "docker-up: $*" >&2; }
stage_start() { STAGE_T0=$(date +%s); }
stage_end() { log "$1 $(( $(date +%s) - STAGE_T0 ))s"; }

apt_mirror() {
    # The Debian mirror apt already uses (deb822 "URIs:" or one-line "deb URL bookworm ...").
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*)
    local uri
    uri=$(cat "${files[@]}" 2>/dev/null | awk '
        /^[[:space:]]*#/ {next}
        /^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/) {print $i; exit}}
        /^deb[[:space:]]/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i ~ /debian\/?$/ && $(i+1) ~ /^bookworm$/) {print $i; exit}}
    ' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    stage_start
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap >/dev/null
    stage_end install
fi

if ! docker info >/dev/null 2>&1; then
    stage_start
    pidfile=/var/run/docker.pid
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        rm -f "$pidfile"  # left by a daemon that died; dockerd refuses to start over it
    fi
    nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        log "dockerd did not become ready; last lines of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2
        exit 1
    fi
    stage_end dockerd
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    stage_start
    rootfs=$(mktemp -d /tmp/tao-rootfs.XXXXXX)
    mirror=$(apt_mirror)
    log "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" >/tmp/debootstrap.log 2>&1 || {
        tail -n 20 /tmp/debootstrap.log >&2
        exit 1
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    stage_end debootstrap
    stage_start
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    stage_end import
fi

if ! docker image inspect "$TORCH_IMAGE" >/dev/null 2>&1; then
    stage_start
    ctx=$(mktemp -d /tmp/tao-torch-ctx.XXXXXX)
    cp "$TORCH_WHEEL" "$ctx/"
    cp "$CA_BUNDLE" "$ctx/host-ca.crt"
    # Pin the libraries to the host's versions when the host has them, so tests inside and outside agree.
    pins=()
    for pkg in "${PY_PACKAGES[@]}"; do
        ver=$(python3 -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
        pins+=("${pkg}${ver:+==$ver}")
    done
    index_args=""
    if index=$(pip config get global.index-url 2>/dev/null); then index_args="--index-url $index"; fi
    wheel=$(basename "$TORCH_WHEEL")
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV PIP_CERT=/etc/ssl/certs/host-ca.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    VIRTUAL_ENV=/opt/venv \\
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
COPY $wheel /tmp/wheels/
RUN python3 -m venv /opt/venv \\
 && pip install $index_args /tmp/wheels/$wheel ${pins[*]} \\
 && rm -rf /tmp/wheels
WORKDIR /workspace
EOF
    docker build --network host -t "$TORCH_IMAGE" "$ctx" >/tmp/tao-torch-build.log 2>&1 || {
        tail -n 30 /tmp/tao-torch-build.log >&2
        rm -rf "$ctx"
        exit 1
    }
    rm -rf "$ctx"
    stage_end torch-image
fi

log "ready: $(docker version --format '{{.Server.Version}}') images $BASE_IMAGE $TORCH_IMAGE"
