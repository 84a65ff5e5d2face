#!/usr/bin/env bash
# Build the product image anomalyd:ci in CI and smoke-run it.
#
# CI machines reach PyPI but no container registry, and pip inside a build
# container may not reach anything. So: the image is built FROM the local
# debootstrapped base (.ci/build-base-image.sh), and every wheel is downloaded on
# the host first (pip download, through the host's pip cache) into a gitignored
# wheelhouse, which this script serves on loopback (python's http.server) while the
# build runs with --network host; the Dockerfile installs offline with --no-index
# --find-links URL. Served, not sent as build context: 3 GB of wheels were sent to the
# daemon twice and copied into a layer, minutes of CI's provisioning.
#
# torch: the only index reachable in CI is PyPI, whose Linux torch wheel is the
# CUDA build (~3 GB with its nvidia-* wheels). The image works on CPU too; it is
# just big. Users build the CPU-only image from download.pytorch.org instead (see
# docs/deploy.md).
#
# Versions: when the shared .venv exists, the wheelhouse is pinned to exactly what
# it has installed (pip freeze as constraints), so the image runs what CI tested.
#
# Usage: .ci/build-app-image.sh
# Env:   APP_IMAGE (anomalyd:ci), APP_DEPS_IMAGE (APP_IMAGE-deps), BASE_IMAGE (anomalyd/debian:bookworm),
#        WHEELHOUSE (.whl, relative to the repository root), WHEELS_PORT (38765:
#        the loopback port it is served on; fixed, so that the dependencies' stage
#        stays cached from one build to the next), PYTHON (host python used for pip
#        download and the server: .venv/bin/python, else python3),
#        SKIP_WHEEL_DOWNLOAD=1 to reuse the wheelhouse as it is.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${APP_IMAGE:-anomalyd:ci}
DEPS_IMAGE=${APP_DEPS_IMAGE:-$IMAGE-deps}  # the dependencies' stage, kept as the build cache
BASE=${BASE_IMAGE:-anomalyd/debian:bookworm}
WHEELHOUSE=${WHEELHOUSE:-.whl}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

say() { echo "[build-app-image] $*"; }

.ci/start-docker.sh
BASE_IMAGE=$BASE .ci/build-base-image.sh

# --- wheelhouse ----------------------------------------------------------------
if [[ ${SKIP_WHEEL_DOWNLOAD:-0} != 1 ]]; then
    start=$SECONDS
    mkdir -p "$WHEELHOUSE"
    constraints=()
    if [[ -x .venv/bin/pip ]]; then
        .venv/bin/pip freeze --exclude-editable 2>/dev/null \
            | grep -vE '^(-e |anomalyd==)' >"$WHEELHOUSE/constraints.txt" || true
        constraints=(-c "$WHEELHOUSE/constraints.txt")
    fi
    say "pip download into $WHEELHOUSE (python: $PYTHON)"
    # setuptools and wheel: the build backend of `pip install .` (build isolation
    # needs them in the wheelhouse when the install is offline). Wheels already in
    # the wheelhouse are not downloaded again.
    log=$(mktemp)
    "$PYTHON" -m pip download --progress-bar off --dest "$WHEELHOUSE" "${constraints[@]}" \
        --only-binary=:all: . 'setuptools>=68' wheel >"$log" 2>&1 \
        || { tail -n 30 "$log" >&2; rm -f "$log"; exit 1; }
    # Drop wheels this resolution did not pick (other versions from earlier runs):
    # they would be candidates for the offline install.
    keep=$(sed -nE 's/^[[:space:]]*(Saved|File was already downloaded) (.*)$/\2/p' "$log" | xargs -rn1 basename)
    if [[ -z $keep ]]; then
        say "could not read the downloaded files from pip's output:" >&2
        tail -n 20 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    for whl in "$WHEELHOUSE"/*.whl; do
        grep -qxF "$(basename "$whl")" <<<"$keep" || { say "removing stale $(basename "$whl")"; rm -f "$whl"; }
    done
    say "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels," \
        "$(du -sh "$WHEELHOUSE" | cut -f1), in $((SECONDS - start))s"
fi
if ! find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' | grep -q .; then
    say "no wheels in $WHEELHOUSE; run without SKIP_WHEEL_DOWNLOAD" >&2
    exit 1
fi

# --- disk -------------------------------------------------------------------------
# The legacy builder keeps every earlier build's stages as dangling images (the
# build stage alone is ~9 GB with CUDA torch); on a machine that runs CI again and
# again they fill the disk. They are only a build cache, so they go before and after.
prune() {
    docker container prune -f >/dev/null
    docker image prune -f | tail -n 1 | sed 's/^/[build-app-image] dangling images: /'
}
prune
need_gb=${APP_IMAGE_FREE_GB:-22}  # build stage + runtime image + build context, with margin
free_gb=$(($(df -Pk "$(docker info -f '{{.DockerRootDir}}')" | awk 'NR == 2 {print $4}') / 1024 / 1024))
if ((free_gb < need_gb)); then
    say "only ${free_gb} GB free for docker ($(docker info -f '{{.DockerRootDir}}'));" \
        "building $IMAGE needs about ${need_gb} GB. Free space (docker system df shows what" \
        "docker holds) or set APP_IMAGE_FREE_GB if you know better." >&2
    exit 1
fi

# --- build ------------------------------------------------------------------------
# The dependencies' stage first, tagged: a tagged image is not dangling, so the prunes
# keep it, and the next build on this machine reuses it (minutes of torch's CUDA wheels
# installed and copied) until pyproject.toml or the wheelhouse changes.
# The wheelhouse on loopback for the build's pip, stopped when this script ends.
port=${WHEELS_PORT:-38765}
# A token only this run's server can return: another process already listening on the
# port (an earlier run's server, something else) must not serve this build its wheels.
# An earlier run's server on the same wheelhouse would serve the token too: the port must
# be free before this run's server starts.
if ! "$PYTHON" -c "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port)); s.close()" 2>/dev/null; then
    say "port $port is taken (an earlier build's wheel server?); free it or set WHEELS_PORT" >&2
    exit 1
fi
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "$token" >"$WHEELHOUSE/.serving"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$WHEELHOUSE/.serving"' EXIT
url=http://127.0.0.1:$port/
serving=0
for _ in $(seq 50); do
    kill -0 "$server" 2>/dev/null || break
    got=$("$PYTHON" -c "import urllib.request as u; print(u.urlopen('${url}.serving', timeout=1).read().decode().strip())" 2>/dev/null || true)
    [[ $got == "$token" ]] && { serving=1; break; }
    sleep 0.2
done
if ((!serving)); then
    say "cannot serve $WHEELHOUSE on $url: port $port taken, or the server did not start (set WHEELS_PORT)" >&2
    exit 1
fi
wheels_id=$(find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' -printf '%f\n' | sort | sha256sum | cut -c1-16)

start=$SECONDS
args=(--network host --build-arg "BASE_IMAGE=$BASE" --build-arg "FIND_LINKS=$url"
    --build-arg "WHEELS_ID=$wheels_id")
say "docker build --target deps -t $DEPS_IMAGE (base $BASE, offline from $WHEELHOUSE at $url)"
docker build "${args[@]}" --target deps -t "$DEPS_IMAGE" .
say "dependencies' stage $DEPS_IMAGE in $((SECONDS - start))s"
say "docker build -t $IMAGE"
docker build "${args[@]}" -t "$IMAGE" .
say "built $IMAGE in $((SECONDS - start))s," \
    "$(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1024 / 1024)) MiB"
kill "$server" 2>/dev/null || true
prune

# --- smoke ------------------------------------------------------------------------
# As it runs in Kubernetes: read-only root, /tmp a tmpfs, no capabilities.
run=(docker run --rm --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

uid=$("${run[@]}" --entrypoint id "$IMAGE" -u)
[[ $uid == 10001 ]] || { say "image runs as uid $uid, expected 10001" >&2; exit 1; }

help=$("${run[@]}" "$IMAGE" --help)
echo "$help"
missing=()
for sub in run train replay evaluate simulate demo; do
    grep -qw -- "$sub" <<<"$help" || missing+=("$sub")
done
if ((${#missing[@]})); then
    say "\`anomalyd --help\` does not list: ${missing[*]}" >&2
    exit 1
fi
say "smoke ok: uid 10001, \`anomalyd --help\` lists every subcommand"
say "next: pytest -m deploy tests/deploy/test_image.py (runs the image against a broker)"
