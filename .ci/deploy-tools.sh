#!/usr/bin/env bash
# Install the deployment validators that tests/deploy runs, on a fresh Debian 12
# machine, from the registries CI can reach (Debian apt, the Go module proxy, PyPI).
# Idempotent: each tool is installed once into the tools directory and reused.
#
#   promtool             from Debian's prometheus package (only the binary is
#                        extracted: no server is installed or started)
#   kustomize            go install sigs.k8s.io/kustomize/kustomize/v5
#   systemd-analyze      Debian's systemd package
#   kubernetes-validate  PyPI, into a venv of its own; it bundles the Kubernetes
#                        JSON schemas, so validation needs no network
#   CRD schemas          ServiceMonitor, PrometheusRule (prometheus-operator) and
#                        ScaledObject (KEDA), from those projects' Go modules as
#                        served by the Go module proxy (checksummed by sum.golang.org)
#
# Usage: .ci/deploy-tools.sh         then: export ANOMALYD_TOOLS_DIR=... (printed)
# Env:   ANOMALYD_TOOLS_DIR (<repo>/.cache/deploy-tools), GOPROXY (proxy.golang.org)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${ANOMALYD_TOOLS_DIR:-$REPO/.cache/deploy-tools}
KUSTOMIZE_VERSION=v5.5.0
KUBERNETES_VALIDATE_VERSION=1.32.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.16.1
# Used only when no Go >= 1.22 is on PATH (Debian 12's golang-go is 1.19).
GO_TOOLCHAIN=go1.23.4
GOPROXY_URL=${GOPROXY:-https://proxy.golang.org}
GOPROXY_URL=${GOPROXY_URL%%,*}

say() { echo "[deploy-tools] $*"; }
mkdir -p "$TOOLS/bin" "$TOOLS/crds"
export PATH="$TOOLS/bin:$TOOLS/go/bin:$PATH"

apt_updated=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        say "need root to apt-get install $*" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ((!apt_updated)); then apt-get update -q; apt_updated=1; fi
    apt-get install -y -q --no-install-recommends "$@"
}

# --- promtool ----------------------------------------------------------------------
if [[ ! -x $TOOLS/bin/promtool ]]; then
    say "promtool: extracting from Debian's prometheus package"
    command -v dpkg-deb >/dev/null || { say "dpkg-deb missing: not Debian?" >&2; exit 1; }
    [[ $(id -u) -eq 0 ]] && { ((apt_updated)) || { apt-get update -q; apt_updated=1; }; }
    work=$(mktemp -d)
    (cd "$work" && apt-get download prometheus) >/dev/null
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    install -m 0755 "$work/x/usr/bin/promtool" "$TOOLS/bin/promtool"
    rm -rf "$work"
fi
say "$("$TOOLS/bin/promtool" --version 2>&1 | head -1)"

# --- systemd-analyze ------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    say "systemd-analyze: installing Debian's systemd package"
    apt_install systemd
fi
say "$(systemd-analyze --version | head -1)"

# --- Go (for kustomize and the CRD modules) ----------------------------------------
go_ok() {
    command -v go >/dev/null || return 1
    local v
    v=$(go env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%.*}
    ((major > 1 || (major == 1 && minor >= 22)))
}
if ! go_ok; then
    if [[ ! -x $TOOLS/go/bin/go ]]; then
        # The Go toolchain itself is a module on the proxy (what GOTOOLCHAIN uses).
        arch=$(dpkg --print-architecture)
        url="$GOPROXY_URL/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-$arch.zip"
        say "go: fetching $GO_TOOLCHAIN from $url"
        command -v unzip >/dev/null || apt_install unzip
        command -v curl >/dev/null || apt_install curl ca-certificates
        work=$(mktemp -d)
        curl -fsSL -o "$work/go.zip" "$url"
        unzip -q "$work/go.zip" -d "$work"
        rm -rf "$TOOLS/go"
        mv "$work/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch" "$TOOLS/go"
        chmod -R u+w "$TOOLS/go"
        rm -rf "$work"
    fi
fi
# -modcacherw: the module cache under the tools dir stays deletable with rm -rf.
export GOTOOLCHAIN=local GOFLAGS="-mod=mod -modcacherw"
export GOPATH=${GOPATH:-$TOOLS/gopath}
say "$(go version)"

# --- kustomize ------------------------------------------------------------------------
# `go install`ed kustomize reports its version as "(devel)": keep a stamp instead.
stamp=$TOOLS/bin/.kustomize-version
if ! { [[ -x $TOOLS/bin/kustomize ]] && [[ $(cat "$stamp" 2>/dev/null) == "$KUSTOMIZE_VERSION" ]]; }; then
    say "kustomize: go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    GOBIN=$TOOLS/bin go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    echo "$KUSTOMIZE_VERSION" >"$stamp"
fi
say "kustomize $(cat "$stamp")"

# --- CRD schemas ------------------------------------------------------------------------
fetch_crd() { # module version path-in-module
    local dest=$TOOLS/crds/$(basename "$3")
    [[ -s $dest ]] && return 0
    local dir
    dir=$(go mod download -json "$1@$2" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')
    [[ -f $dir/$3 ]] || { say "$3 not found in $1@$2" >&2; exit 1; }
    install -m 0644 "$dir/$3" "$dest"
    say "CRD $(basename "$3") from $1@$2"
}
fetch_crd github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
    example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
fetch_crd github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
    example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
fetch_crd github.com/kedacore/keda/v2 "$KEDA_VERSION" config/crd/bases/keda.sh_scaledobjects.yaml

# --- kubernetes-validate (and jsonschema + PyYAML for the CRD check) ---------------
venv=$TOOLS/venv
if ! { [[ -x $venv/bin/kubernetes-validate ]] \
    && [[ $("$venv/bin/python" -m pip show kubernetes-validate 2>/dev/null) \
        == *"Version: $KUBERNETES_VALIDATE_VERSION"* ]]; }; then
    say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
say "kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1)"

say "ready: export ANOMALYD_TOOLS_DIR=$TOOLS"
