"""Detection quality on simulated fleets nobody tuned on: test seeds only, shipped defaults.

Trains with `anomalyd train`'s defaults and replays clean and anomalous continuations from
a cold state through the live engine path (`training.fleet.evaluate.evaluate_one`), on
TEST seeds (`SPLITS["test"]`): their numbers are only reported, never used to choose a
setting (docs/quality.md). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.prefetch import background
from training.fleet.evaluate import SPLITS, evaluate_one

# A few minutes of CPU (two real fits and four replays); more on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STYLES = ("daily", "irregular")  # a cycle with coupled channels; jittered, gappy, missing cells
SEED = SPLITS["test"][0]
STREAMS = 12  # as the published fleet tables (docs/quality.md)


def _evaluate(style: str, workdir: Path) -> dict[str, Any]:
    return evaluate_one(style, SEED, STREAMS, 2000, 1500, workdir, jobs=1)


# The styles side by side, one process of one torch thread each, started at collection and
# at idle priority (tests/prefetch.py): on CI's two cores this setup was the run's longest
# wait, and the integration tests before it leave a core idle much of the time. Each trains
# with --jobs 1: the two already fill the cores.
RUNS = {s: background(__name__, f"fleet-{s}", partial(_evaluate, s)) for s in STYLES}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    results = [RUNS[style].result(tmp_path_factory.mktemp(style)) for style in STYLES]
    out = {}
    for style, r in zip(STYLES, results, strict=True):
        for det in ("anomalyd", "baseline"):
            a, c = r[det]["anomalous"], r[det]["clean"]
            print(
                f"\n{style} {det}: recall {a['recall']:.2f} precision {a['precision']:.2f} "
                f"clean false/10k cold {c['cold']['false_per_10k']} warm "
                f"{c['warm']['false_per_10k']}, in incidents {c['all']['share_in_incidents']:.4%}"
                f"; by kind {a['recall_by_kind']}"
            )
        out[style] = r
    return out


@pytest.mark.parametrize("style", STYLES)
def test_clean_streams_starting_cold_raise_almost_no_incident(
    runs: dict[str, dict[str, Any]], style: str
) -> None:
    clean = runs[style]["anomalyd"]["clean"]
    for part in ("cold", "warm"):  # the first 1,000 readings after a cold start, and after
        assert clean[part]["false_per_10k"] <= 1.0, (part, clean)
    assert clean["all"]["share_in_incidents"] <= 0.001, clean


@pytest.mark.parametrize("style", STYLES)
def test_incidents_that_open_are_real(runs: dict[str, dict[str, Any]], style: str) -> None:
    assert runs[style]["anomalyd"]["anomalous"]["precision"] >= 0.9


# Daily on test seed 101 still misses decouplings (0.83); irregular reaches every kind
# since session 29 (one fleet prior, the shift rule's floor at 2.0): it must stay there.
NOT_YET = pytest.mark.xfail(
    strict=True,
    reason="issue 12's recall target (>= 0.9 for every kind) is not met: measured figures in "
    "docs/quality.md",
)


@pytest.mark.parametrize(
    "style", [pytest.param(s, marks=NOT_YET) if s == "daily" else s for s in STYLES]
)
def test_every_kind_is_caught(runs: dict[str, dict[str, Any]], style: str) -> None:
    by_kind = runs[style]["anomalyd"]["anomalous"]["recall_by_kind"]
    assert all(v >= 0.9 for v in by_kind.values()), by_kind


def test_these_figures_come_from_seeds_no_setting_was_chosen_on() -> None:
    assert SEED not in SPLITS["dev"] and set(SPLITS["dev"]).isdisjoint(SPLITS["test"])
