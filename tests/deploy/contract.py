"""The contracts of docs/architecture.md, parsed: metric names and labels, env names.

Deployment artefacts (alert rules, dashboard, manifests, unit files) must only use
names from there; these helpers give the tests the lists to check against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"

# Series a histogram or counter adds to its family name in the exposition.
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
# Labels Prometheus itself (or the scrape) attaches, and `le` of histogram buckets.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "le"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str
    labels: frozenset[str]


def metrics() -> dict[str, MetricSpec]:
    """The metric table: ``| anomalyd_x | type | labels |`` rows."""
    specs: dict[str, MetricSpec] = {}
    row = re.compile(r"^\|\s*(anomalyd_\w+)\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|\s*$")
    for line in ARCHITECTURE.read_text().splitlines():
        m = row.match(line)
        if m:
            # "reason (idle, lru)" -> reason; "topic, partition" -> both.
            labels_text = re.sub(r"\([^)]*\)", "", m.group(3))
            labels = frozenset(x.strip() for x in labels_text.split(",") if x.strip())
            specs[m.group(1)] = MetricSpec(m.group(1), m.group(2), labels)
    if not specs:
        raise AssertionError(f"no metric table found in {ARCHITECTURE}")
    return specs


def env_names() -> frozenset[str]:
    """Every ANOMALYD_* variable of the Configuration section.

    A bullet names the first variable in full and its siblings as ``__KEY``:
    ``ANOMALYD_KAFKA__BOOTSTRAP_SERVERS``, ``__SECURITY_PROTOCOL`` ...
    """
    text = ARCHITECTURE.read_text()
    start = text.index("## Configuration")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    names: set[str] = set()
    prefix = ""
    for token in re.findall(r"`([A-Z_][A-Z0-9_]*)`", section):
        if token.startswith("ANOMALYD_"):
            names.add(token)
            prefix = token.split("__")[0] if "__" in token else ""
        elif token.startswith("__") and prefix:
            names.add(prefix + token)
    if not names:
        raise AssertionError(f"no ANOMALYD_* names in the Configuration section of {ARCHITECTURE}")
    return frozenset(names)


def family(series_name: str) -> str:
    """The metric family of an exposed series: anomalyd_x_bucket -> anomalyd_x."""
    for suffix in _SUFFIXES:
        if series_name.endswith(suffix):
            return series_name[: -len(suffix)]
    return series_name


def referenced_metrics(promql: str) -> set[str]:
    """anomalyd_* families a PromQL expression (or any text) refers to."""
    return {family(m) for m in re.findall(r"\banomalyd_[a-z0-9_]+", promql)}


def referenced_labels(promql: str) -> dict[str, set[str]]:
    """Label names used in matchers, per metric: anomalyd_x{reason="..."} -> {x: {reason}}."""
    found: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"\b(anomalyd_[a-z0-9_]+)\s*\{([^}]*)\}", promql):
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
        found.setdefault(family(name), set()).update(labels)
    return found
