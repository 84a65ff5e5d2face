#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the integration tests.
#
# Idempotent: installs Debian's docker.io (and debootstrap, which
# build-base-image.sh needs) only when missing, starts dockerd only when
# `docker info` does not already answer. Needs root on Debian 12.
#
# dockerd binds published ports to 127.0.0.1 (--ip) so that test brokers are
# never reachable from outside the machine.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/anomalyd-dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}

say() { echo "[start-docker] $*"; }

if docker info >/dev/null 2>&1; then
    say "a Docker engine already answers; nothing to do"
    exit 0
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]}) or run as root" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" iptables
fi

if [[ $(id -u) -ne 0 ]]; then
    say "dockerd is installed but not running, and starting it needs root" >&2
    exit 1
fi

# systemd is not PID 1 on CI containers/VMs like ours, so start dockerd by hand.
# A stale pid file from a killed dockerd would make the new one refuse to start.
# (pid file rather than pgrep: procps is not on a minimal Debian.)
if ! { [[ -f /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    rm -f /var/run/docker.pid
    say "starting dockerd --ip 127.0.0.1 (log: $DOCKERD_LOG)"
    # setsid: its own session, so it outlives the shell (and process group) that started it.
    setsid nohup dockerd --ip 127.0.0.1 >>"$DOCKERD_LOG" 2>&1 < /dev/null &
else
    say "dockerd process exists but does not answer yet; waiting"
fi

for ((i = 0; i < WAIT_S; i++)); do
    if docker info >/dev/null 2>&1; then
        say "dockerd answers after ${i}s ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done
say "dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
tail -n 30 "$DOCKERD_LOG" >&2 || true
exit 1
