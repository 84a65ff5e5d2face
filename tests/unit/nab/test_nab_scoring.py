"""NAB scorer: hand-computed cases, the efficient sweep against brute force, the real corpus.

Hand values use the identity ``S(x) = 2 / (1 + exp(5x)) - 1 = -tanh(2.5 x)``; a detection
in a window of width ``w`` ending on row ``e`` earns ``A_TP * S(-(e - i + 1) / w) / S(-1)``,
a false positive after it costs ``A_FP * S((i - e) / (w - 1))``.
"""

from __future__ import annotations

import doctest
import math
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import training.nab.normalisation
import training.nab.scoring
import training.nab.windows
from training.nab.normalisation import corpus_report, normalised_scores, null_detector, null_scores
from training.nab.scoring import (
    NO_DETECTION_THRESHOLD,
    PROFILES,
    perfect_score,
    score_corpus,
    score_files,
    sweep_best_threshold,
    sweep_thresholds,
)
from training.nab.windows import (
    FileScores,
    layout_rows,
    load_nab_series,
    load_windows,
    probationary_rows,
    scaled_sigmoid,
)

NAB_DIR = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "nab"
S_MAX = math.tanh(2.5)  # S(-1) = 0.98661


def s(x: float) -> float:
    """NAB's scaled sigmoid written independently of the code under test."""
    return -1.0 if x > 3.0 else -math.tanh(2.5 * x)


def toy(
    n: int,
    windows: Sequence[tuple[int, int]] = (),
    detections: Sequence[int] = (),
    relpath: str = "toy/f.csv",
) -> FileScores:
    """A file of ``n`` one-minute rows, windows by row index, score 1 on ``detections``."""
    ts = np.datetime64("2015-01-01T00:00") + np.arange(n).astype("timedelta64[m]")
    scores = np.zeros(n)
    scores[list(detections)] = 1.0
    bounds = [(ts[a].item(), ts[b].item()) for a, b in windows]
    return FileScores(relpath, ts, scores, bounds)


def raw(file: FileScores, profile: str = "standard", probation: float = 0.0) -> float:
    return score_corpus([file], profile, 0.5, probation_percent=probation)


# --- the scaled sigmoid and the probationary period ------------------------------------


def test_scaled_sigmoid_at_nabs_reference_points() -> None:
    xs = np.array([-1.0, -0.5, 0.0, 1.0, 3.0, 3.0001])
    expected = [0.98661, 0.84828, 0.0, -0.98661, 2 / (1 + math.exp(15)) - 1, -1.0]
    assert scaled_sigmoid(xs) == pytest.approx(expected, abs=1e-5)


def test_probationary_period_is_15_percent_capped_at_750_rows() -> None:
    assert probationary_rows(100) == 15
    assert probationary_rows(4000) == 600
    assert probationary_rows(5000) == 750
    assert probationary_rows(22695) == 750  # nyc_taxi-sized files stop at 0.15 * 5000


# --- true positives: where in the window, and only the earliest ------------------------


def test_detection_at_window_start_earns_exactly_a_tp() -> None:
    assert raw(toy(20, [(10, 14)], [10])) == 1.0


def test_detection_at_window_end_and_middle_follow_the_sigmoid() -> None:
    # Width 5, last row 14: row 14 sits at -1/5, row 12 at -3/5.
    assert raw(toy(20, [(10, 14)], [14])) == pytest.approx(math.tanh(0.5) / S_MAX)  # 0.46839
    assert raw(toy(20, [(10, 14)], [12])) == pytest.approx(math.tanh(1.5) / S_MAX)  # 0.91743


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    assert raw(toy(20, [(10, 14)], [10, 11, 12, 13, 14])) == 1.0
    assert raw(toy(20, [(10, 14)], [13, 11, 12])) == pytest.approx(math.tanh(2.0) / S_MAX)
    result = score_files([toy(20, [(10, 14)], [11, 12])], "standard", 0.5, probation_percent=0)
    assert (result[0].windows_detected, result[0].tp_rows, result[0].fp_rows) == (1, 2, 0)


def test_a_missed_window_costs_a_fn() -> None:
    two_windows = toy(40, [(10, 14), (25, 29)])
    assert raw(two_windows, "standard") == -2.0
    assert raw(two_windows, "reward_low_FN_rate") == -4.0
    result = score_files([two_windows], "standard", 0.5, probation_percent=0)[0]
    assert (result.windows_detected, result.windows_missed) == (0, 2)


# --- false positives: scaled by the distance from the preceding window -----------------


def test_false_positive_right_after_a_window_costs_less_than_far_after() -> None:
    # Window 10..14 is missed (-1); width 5, so distances are divided by 4.
    right_after = raw(toy(40, [(10, 14)], [15]))
    far_after = raw(toy(40, [(10, 14)], [30]))
    assert right_after == pytest.approx(-1 + 0.11 * s(1 / 4))  # -1 - 0.11 * 0.55459
    assert far_after == pytest.approx(-1 - 0.11)  # (30 - 14) / 4 = 4 > 3: full cost
    assert right_after > far_after


def test_false_positive_before_any_window_costs_full_a_fp() -> None:
    assert raw(toy(40, [(10, 14)], [5])) == pytest.approx(-1 - 0.11)
    assert raw(toy(40, [], [5])) == pytest.approx(-0.11)


def test_false_positive_is_measured_from_the_preceding_window_not_the_next() -> None:
    # Row 28 is 2 rows before window 30..34 but 14 rows after window 10..14: full cost.
    assert raw(toy(40, [(10, 14), (30, 34)], [28])) == pytest.approx(-2 - 0.11)


# --- the probationary period -----------------------------------------------------------


def test_rows_in_the_probationary_period_are_not_scored() -> None:
    # 20 rows at 15%: rows 0..2 are probationary.
    assert raw(toy(20, [], [2]), probation=0.15) == 0.0
    assert raw(toy(20, [], [3]), probation=0.15) == pytest.approx(-0.11)


def test_a_window_inside_the_probationary_period_is_neither_found_nor_missed() -> None:
    result = score_files([toy(20, [(0, 1)])], "standard", 0.5)[0]
    assert (result.raw, result.windows, result.windows_missed) == (0.0, 0, 0)


# --- profiles --------------------------------------------------------------------------


def test_profiles_carry_nabs_weights() -> None:
    weights = {n: (p.tp_weight, p.fp_weight, p.fn_weight) for n, p in PROFILES.items()}
    assert weights == {
        "standard": (1.0, 0.11, 1.0),
        "reward_low_FP_rate": (1.0, 0.22, 1.0),
        "reward_low_FN_rate": (1.0, 0.11, 2.0),
    }


def test_profiles_weigh_the_same_detections_differently() -> None:
    one_miss_one_far_fp = toy(60, [(10, 14)], [40])
    assert raw(one_miss_one_far_fp, "standard") == pytest.approx(-1.11)
    assert raw(one_miss_one_far_fp, "reward_low_FP_rate") == pytest.approx(-1.22)
    assert raw(one_miss_one_far_fp, "reward_low_FN_rate") == pytest.approx(-2.11)
    found = toy(60, [(10, 14)], [10])
    assert {raw(found, name) for name in PROFILES} == {1.0}


def test_unknown_profile_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="reward_low_FN_rate"):
        score_corpus([toy(10)], "lenient", 0.5)


# --- normalisation ---------------------------------------------------------------------


def toy_corpus() -> list[FileScores]:
    return [
        toy(200, [(100, 109)], relpath="a/one.csv"),
        toy(300, [(120, 129), (200, 219)], relpath="b/two.csv"),
        toy(150, [], relpath="b/none.csv"),
    ]


def perfect(files: Sequence[FileScores], probation: float = 0.15) -> list[FileScores]:
    """Score 1 on the first row of every window, 0 elsewhere."""
    out = []
    for f in files:
        scores = np.zeros(f.scores.size)
        scores[layout_rows(f, probation).window_bounds[:, 0]] = 1.0
        out.append(f.with_scores(scores))
    return out


def test_null_detector_normalises_to_0_and_perfect_detector_to_100() -> None:
    files = toy_corpus()
    assert null_scores(files) == {
        "standard": -3.0,
        "reward_low_FP_rate": -3.0,
        "reward_low_FN_rate": -6.0,
    }
    assert perfect_score(files, "reward_low_FN_rate") == 3.0
    assert normalised_scores(null_detector(files)) == dict.fromkeys(PROFILES, 0.0)
    assert normalised_scores(perfect(files)) == dict.fromkeys(PROFILES, 100.0)


def test_corpus_report_breaks_scores_down_by_category() -> None:
    files = perfect(toy_corpus())
    files[2] = files[2].with_scores(np.eye(1, 150, 140)[0])  # one far FP in b/none.csv
    std = corpus_report(files)["profiles"]["standard"]
    assert std["threshold"] == 1.0
    assert std["raw"] == pytest.approx(3 - 0.11)
    assert std["normalised"] == pytest.approx(100 * (3 - 0.11 + 3) / 6)
    assert std["categories"]["a"] == {
        "raw": 1.0,
        "windows": 1,
        "windows_detected": 1,
        "windows_missed": 0,
        "fp_rows": 0,
    }
    assert std["categories"]["b"]["fp_rows"] == 1
    assert std["categories"]["b"]["windows_detected"] == 2
    assert [f["relpath"] for f in std["files"]] == ["a/one.csv", "b/two.csv", "b/none.csv"]


# --- the threshold sweep ---------------------------------------------------------------


def random_corpus(rng: np.random.Generator) -> list[FileScores]:
    files = []
    for k in range(int(rng.integers(1, 4))):
        n = int(rng.integers(20, 90))
        slots = np.arange(5, n - 6, 6)  # windows of up to 5 rows never touch
        starts = sorted(
            rng.choice(slots, size=min(slots.size, int(rng.integers(0, 4))), replace=False)
        )
        windows = [(int(a), int(a) + int(rng.integers(0, 5))) for a in starts]
        ts = np.datetime64("2015-01-01T00:00") + np.arange(n).astype("timedelta64[m]")
        scores = np.round(rng.random(n), 1)  # coarse scores: many ties across files
        bounds = [(ts[a].item(), ts[b].item()) for a, b in windows]
        files.append(FileScores(f"c{k % 2}/f{k}.csv", ts, scores, bounds))
    return files


@pytest.mark.parametrize("profile", list(PROFILES))
def test_sweep_matches_brute_force_over_every_threshold(profile: str) -> None:
    rng = np.random.default_rng(20240601)
    for _ in range(40):
        files = random_corpus(rng)
        probation = float(rng.choice([0.0, 0.15]))
        thresholds, totals = sweep_thresholds(files, profile, probation_percent=probation)
        scored = np.concatenate([f.scores[layout_rows(f, probation).scorable] for f in files])
        assert thresholds.tolist() == [NO_DETECTION_THRESHOLD, *sorted(set(scored), reverse=True)]
        brute = [score_corpus(files, profile, t, probation_percent=probation) for t in thresholds]
        assert totals == pytest.approx(brute, abs=1e-9)

        best_t, best_raw = sweep_best_threshold(files, profile, probation_percent=probation)
        assert best_raw == pytest.approx(max(brute), abs=1e-9)
        # NAB keeps the highest threshold among equal scores.
        assert best_t == thresholds[int(np.argmax(np.round(brute, 9)))]


def test_sweep_on_a_hand_made_corpus() -> None:
    # a: window 14..16 found at 0.9, an FP at 0.7 two rows past it (distance 2 / (3 - 1));
    # b: window 15..16 missed, an FP at 0.8 before it (no preceding window: full cost).
    ts = np.arange(30).astype("datetime64[m]")
    a_scores, b_scores = np.zeros(30), np.zeros(30)
    a_scores[[14, 18]] = [0.9, 0.7]
    b_scores[12] = 0.8
    a = FileScores("c/a.csv", ts, a_scores, [(ts[14].item(), ts[16].item())])
    b = FileScores("c/b.csv", ts, b_scores, [(ts[15].item(), ts[16].item())])
    thresholds, totals = sweep_thresholds([a, b], "standard", probation_percent=0)
    assert thresholds.tolist() == [1.1, 0.9, 0.8, 0.7, 0.0]
    assert totals[:4] == pytest.approx([-2.0, 0.0, -0.11, -0.11 + 0.11 * s(1.0)])
    assert sweep_best_threshold([a, b], "standard", probation_percent=0) == (0.9, 0.0)


# --- inputs ----------------------------------------------------------------------------


def test_windows_are_located_by_exact_timestamp_even_out_of_order() -> None:
    # Timestamps step back once (as in machine_temperature_system_failure.csv).
    ts = np.array(
        ["2014-01-07 02:50", "2014-01-07 02:55", "2014-01-07 02:00", "2014-01-07 02:05"],
        dtype="datetime64[us]",
    )
    f = FileScores("c/t.csv", ts, [0, 0, 1, 0], [(ts[2].item(), ts[3].item())])
    assert layout_rows(f, 0).window_bounds.tolist() == [[2, 3]]
    assert score_corpus([f], "standard", 0.5, probation_percent=0) == 1.0


def test_bad_inputs_are_refused_with_the_reason() -> None:
    ts = np.arange(10).astype("datetime64[m]")
    with pytest.raises(ValueError, match=r"1\.5 at row 3 is not a number in \[0, 1\]"):
        FileScores("c/x.csv", ts, [0, 0, 0, 1.5, 0, 0, 0, 0, 0, 0])
    missing = (datetime(2030, 1, 1), ts[5].item())
    with pytest.raises(ValueError, match="is not a timestamp of the file"):
        layout_rows(FileScores("c/x.csv", ts, np.zeros(10), [missing]))
    overlapping = [(ts[2].item(), ts[5].item()), (ts[4].item(), ts[6].item())]
    with pytest.raises(ValueError, match="overlaps"):
        layout_rows(FileScores("c/x.csv", ts, np.zeros(10), overlapping))


def test_docstring_examples_run() -> None:
    for module in (training.nab.scoring, training.nab.normalisation, training.nab.windows):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


# --- the real NAB corpus ---------------------------------------------------------------


@lru_cache(maxsize=1)
def nab_corpus() -> tuple[FileScores, ...]:
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found at {NAB_DIR}")
    windows = load_windows(NAB_DIR / "labels" / "combined_windows.json")
    return tuple(
        FileScores(rel, ts, np.zeros(ts.size), windows[rel])
        for rel, ts, _ in load_nab_series(NAB_DIR / "data")
    )


def test_real_corpus_has_58_files_116_windows_365558_rows() -> None:
    files = nab_corpus()
    windows = load_windows(NAB_DIR / "labels" / "combined_windows.json")
    assert len(windows) == 58
    assert sum(len(w) for w in windows.values()) == 116
    assert sorted(f.relpath for f in files) == sorted(windows)
    assert sum(f.scores.size for f in files) == 365_558


def test_real_corpus_perfect_is_100_and_null_is_0_for_every_profile() -> None:
    files = list(nab_corpus())
    assert null_scores(files) == {
        "standard": -116.0,
        "reward_low_FP_rate": -116.0,
        "reward_low_FN_rate": -232.0,
    }
    assert normalised_scores(perfect(files)) == dict.fromkeys(PROFILES, 100.0)
    assert normalised_scores(null_detector(files)) == dict.fromkeys(PROFILES, 0.0)
