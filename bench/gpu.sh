#!/usr/bin/env bash
# The CUDA path, proved in one go on a machine with a GPU (under 8 minutes):
#
#   bash bench/gpu.sh          # CUDA tests, engine at 100k and 1M streams, e2e --device cuda
#   bash bench/gpu.sh --dry    # the same steps on the CPU at tiny sizes, in seconds (CI)
#
# Progress goes to stderr, one JSON summary to stdout (its last line); exit 0 when every
# step that ran passed. It installs nothing that is already importable: it uses $PYTHON,
# else .venv/bin/python, else python3, and only when one of the modules below is missing
# does it make a venv (.cache/gpu-venv, over the system's site-packages so that a
# preinstalled torch is kept) and pip-install the missing ones; the summary lists them.
# The end-to-end step needs a broker (Docker, or Java and the Kafka jars, see
# docs/benchmarks.md); without one it is reported as skipped, with the reason.
set -uo pipefail

DRY=0
case "${1:-}" in
  --dry) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--dry]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/anomalyd-gpu.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
START=$(date +%s)
say() { echo "gpu.sh: $*" >&2; }

# module=distribution: what the steps import.
NEEDED="torch=torch numpy=numpy orjson=orjson pydantic_settings=pydantic-settings
kafka=kafka-python prometheus_client=prometheus-client pytest=pytest
pytest_timeout=pytest-timeout hypothesis=hypothesis crc32c=crc32c"

missing() {  # the distributions of the modules "$1" cannot import
  local py="$1" m d out=""
  for pair in $NEEDED; do
    m="${pair%%=*}"; d="${pair#*=}"
    "$py" -c "import $m" >/dev/null 2>&1 || out="$out $d"
  done
  echo "$out"
}

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="$(command -v python3 || true)"; fi
fi
[ -n "$PY" ] || { say "no python3 found"; exit 1; }
INSTALLED=""
MISSING="$(missing "$PY")"
if [ -n "$MISSING" ]; then
  say "$PY lacks:$MISSING"
  VENV="$ROOT/.cache/gpu-venv"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV (with the system's site-packages)"
    "$PY" -m venv --system-site-packages "$VENV" || { say "cannot create a venv"; exit 1; }
  fi
  PY="$VENV/bin/python"
  MISSING="$(missing "$PY")"
  if [ -n "$MISSING" ]; then
    say "pip install$MISSING"
    # shellcheck disable=SC2086  # one word per distribution
    "$PY" -m pip install --quiet $MISSING >&2 || { say "pip install failed"; exit 1; }
    INSTALLED="$MISSING"
  fi
fi
say "python: $PY"

"$PY" - > "$OUT/env.json" <<'EOF'
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda_available": cuda,
    "cuda_version": torch.version.cuda,
    "device_name": torch.cuda.get_device_name() if cuda else None,
    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    "tf32_cudnn": torch.backends.cudnn.allow_tf32,
}))
EOF
if [ "$DRY" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  say "torch sees no CUDA device here: run with --dry, or on a machine with a GPU"
  exit 1
fi

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SMALL=1000; LARGE=5000; SECONDS_EACH=0.5
  TESTS=(tests/unit/core/test_cuda_reference.py -k cpu)
else
  DEVICE=cuda; SMALL=100000; LARGE=1000000; SECONDS_EACH=10
  TESTS=(-m cuda tests/unit/core)  # every CUDA test; the float64 reference among them
fi

step() {  # step NAME TIMEOUT_S CMD...: stdout to $OUT/NAME.out, stderr to $OUT/NAME.err
  local name="$1" limit="$2"; shift 2
  say "$name: $*"
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  echo $? > "$OUT/$name.rc"
  say "$name: exit $(cat "$OUT/$name.rc")"
}

step tests 240 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" "${TESTS[@]}"
step engine_100k 120 "$PY" bench/engine.py --device "$DEVICE" --streams "$SMALL" \
  --seconds "$SECONDS_EACH" --json
step engine_1m 180 "$PY" bench/engine.py --device "$DEVICE" --streams "$LARGE" \
  --seconds "$SECONDS_EACH" --json
if [ "$DRY" = 1 ]; then
  # No broker in seconds: check that the end-to-end benchmark still takes the device.
  step e2e 60 "$PY" bench/e2e.py --help
else
  step e2e 300 "$PY" bench/e2e.py --device cuda --quick --delivery at_least_once --json
fi

"$PY" - "$OUT" "$DRY" "$INSTALLED" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, dry, installed, seconds = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], sys.argv[4]


def tail(name):
    lines = (out / f"{name}.err").read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def json_step(name):
    rc = int((out / f"{name}.rc").read_text())
    text = (out / f"{name}.out").read_text().strip().splitlines()
    if rc == 0 and text:
        try:
            return {"ok": True, **json.loads(text[-1])}
        except ValueError:
            pass
    why = "timed out" if rc == 124 else f"exit {rc}: {tail(name)}"
    return {"ok": False, "error": why}


tests = {"ok": False, "error": tail("tests")}
xml = out / "tests.xml"
if xml.exists():
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    rc = int((out / "tests.rc").read_text())
    # A CUDA run in which everything was skipped proved nothing.
    ran = n["tests"] - n["skipped"]
    tests = {"ok": rc == 0 and ran > 0, "passed": ran - n["failures"] - n["errors"], **n}

if dry:
    help_text = (out / "e2e.out").read_text()
    e2e = {"ok": "--device" in help_text, "status": "dry: flags checked, not run"}
else:
    e2e = json_step("e2e")
    if not e2e["ok"] and "broker" in e2e.get("error", "").lower():
        e2e = {"ok": True, "status": "skipped", "error": e2e["error"]}

summary = {
    "mode": "dry" if dry else "cuda",
    **json.loads((out / "env.json").read_text()),
    "installed": installed.split(),
    "tests": tests,
    "engine_100k": json_step("engine_100k"),
    "engine_1m": json_step("engine_1m"),
    "e2e": e2e,
    "seconds": int(seconds),
}
summary["ok"] = all(summary[k]["ok"] for k in ("tests", "engine_100k", "engine_1m", "e2e"))
print(json.dumps(summary))
sys.exit(0 if summary["ok"] else 1)
EOF
