# anomalyd container image.
#
#   docker build -t anomalyd:0.1.0 .                                   # CPU-only torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 \
#                -t anomalyd:0.1.0-cuda .                              # CUDA torch
#   python3 -m http.server -d .whl -b 127.0.0.1 38765 &                # offline (CI)
#   docker build --network host --build-arg BASE_IMAGE=anomalyd/debian:bookworm \
#                --build-arg FIND_LINKS=http://127.0.0.1:38765/ -t anomalyd:ci .
#
# Build arguments
#   BASE_IMAGE       python:3.11-slim-bookworm. Any Debian 12 image works: when it has
#                    no python3 (CI's debootstrapped anomalyd/debian:bookworm), Debian's
#                    python3 (3.11) and python3-venv are installed with apt.
#   TORCH_INDEX_URL  where torch comes from when installing from indexes; the default
#                    is the CPU-only build (~200 MB instead of ~3 GB of CUDA libraries).
#   FIND_LINKS       a wheelhouse the build reaches by URL (a directory of wheels served
#                    over HTTP). When set, the install is offline: `pip install
#                    --no-index --find-links` and nothing else (TORCH_INDEX_URL is then
#                    ignored). Served rather than copied into the build context: the
#                    wheels then take no layer of their own (gigabytes with CUDA torch),
#                    and the runtime stage can build on the dependencies' stage instead
#                    of copying its virtualenv.
#
# Runtime: uid/gid 10001, root filesystem may be read-only. Writable paths are the
# volume /var/lib/anomalyd (models under models/) and /tmp (an emptyDir/tmpfs).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- python: the interpreter and the service's user ---------------------------------
FROM ${BASE_IMAGE} AS python
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        export DEBIAN_FRONTEND=noninteractive; \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
RUN set -eux; \
    groupadd --gid 10001 anomalyd; \
    useradd --uid 10001 --gid 10001 --home-dir /var/lib/anomalyd --no-create-home \
        --no-log-init --shell /usr/sbin/nologin anomalyd; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/anomalyd /var/lib/anomalyd/models

# --- deps: a virtualenv in /opt/anomalyd with every dependency, not the project -----
# Its layers change only with pyproject.toml or the wheelhouse, never with the code: a
# code change re-runs the small project stages below, not gigabytes of torch (CI keeps
# this stage tagged as its build cache: .ci/build-app-image.sh).
FROM python AS deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG FIND_LINKS=
# The wheelhouse's content by name (.ci/build-app-image.sh passes a hash of its file
# names): a served wheelhouse is no file of the build, so this is what makes a changed
# one rebuild the stage instead of reusing a cached install of the old wheels.
ARG WHEELS_ID=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/anomalyd
# The project without extras (the sandbox, `anomalyd demo` and testcontainers, is the
# demo extra and stays out), with empty packages and README, pulls in its dependencies,
# then goes:
# torch comes from its own index first so that the CPU (or the chosen CUDA) build is
# the one that satisfies the project's torch requirement.
COPY pyproject.toml /src/
RUN set -eux; \
    pip=/opt/anomalyd/bin/pip; \
    mkdir -p /src/detector /src/training; \
    touch /src/README.md /src/detector/__init__.py /src/training/__init__.py; \
    if [ -n "$FIND_LINKS" ]; then \
        "$pip" install --no-index --find-links "$FIND_LINKS" /src; \
    else \
        "$pip" install --index-url "$TORCH_INDEX_URL" torch; \
        "$pip" install /src; \
    fi; \
    "$pip" uninstall -y anomalyd; \
    rm -rf /src

# --- build: the project as a wheel --------------------------------------------------
FROM deps AS build
ARG FIND_LINKS=
COPY pyproject.toml README.m[d] /src/
COPY detector/ /src/detector/
COPY training/ /src/training/
RUN set -eux; \
    if [ -n "$FIND_LINKS" ]; then offline="--no-index --find-links $FIND_LINKS"; else offline=; fi; \
    /opt/anomalyd/bin/pip wheel $offline --no-deps --wheel-dir /dist /src

# --- runtime: the dependencies' stage with the project on top ----------------------
# Built on deps, not copied from it: a copy of its virtualenv was a second layer of
# gigabytes (CUDA torch) written on every build, even when only the code had changed.
FROM deps AS runtime
# The project on top, in a layer of its own; pip itself goes last: the runtime image
# never installs anything.
COPY --from=build /dist/ /tmp/dist/
RUN set -eux; \
    /opt/anomalyd/bin/pip install --no-index --no-deps /tmp/dist/*.whl; \
    /opt/anomalyd/bin/pip uninstall -y pip; \
    rm -rf /tmp/dist
# Bytecode is compiled at install time; nothing may be written to the read-only root
# at run time, so caches (torch, matplotlib) go to /tmp.
ENV PATH=/opt/anomalyd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/anomalyd \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    ANOMALYD_MODEL__DIR=/var/lib/anomalyd/models \
    ANOMALYD_HTTP__HOST=0.0.0.0 \
    ANOMALYD_HTTP__PORT=9400
VOLUME ["/var/lib/anomalyd"]
WORKDIR /var/lib/anomalyd
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ANOMALYD_HTTP__PORT', '9400'), timeout=4)"]
ENTRYPOINT ["anomalyd"]
CMD ["run"]
