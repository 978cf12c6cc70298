"""Units of a given B1+ map (BIDS TB1map) and its plausibility inside a head mask.

The rule under test (``bids_agquant.qmri.b1``): ``--b1-units`` wins, else the sidecar
``Units``, else a guess from the median of the finite positive values (<= 5 fraction, <= 300
percent, above refused because per mille and 10 x degrees of an 80-90 deg pulse overlap).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from bids_agquant.qmri import b1 as qb1

B1 = np.linspace(0.6, 1.4, 33)  # a head's range of B1+ fractions

SYNONYMS = {
    "fraction": ["fraction", "ratio", "1", "a.u.", "au", "unitless", "dimensionless",
                 "arbitrary"],
    "percent": ["percent", "%", "pct", "percentage", "p.u."],
    "per-mille": ["per-mille", "permille", "‰", "1/1000", "fraction*1000", "x1000"],
}
SCALE = {"fraction": 1.0, "percent": 100.0, "per-mille": 1000.0}
DEGREES = ["deg", "degree", "degrees", "°"]
DEGREES_X10 = ["degrees-x10", "deg*10", "0.1 deg", "0.1deg", "decidegrees", "degrees x 10"]


# ------------------------------------------------------------------ sidecar Units
@pytest.mark.parametrize(("units", "canonical"),
                         [(u, c) for c, names in SYNONYMS.items() for u in names])
def test_every_scale_synonym(units, canonical):
    stored = B1 * SCALE[canonical]
    for spelled in (units, units.upper(), f"  {units}\t"):
        decision = qb1.decide_b1_units(stored, spelled)
        assert decision.units == canonical
        assert decision.source == "sidecar" and not decision.guessed
        assert decision.warnings == ()
        assert not decision.describe().startswith("WARNING")
        np.testing.assert_allclose(qb1.to_fraction(stored, decision), B1, rtol=1e-15)


@pytest.mark.parametrize("units", DEGREES)
def test_degrees_are_divided_by_the_flip_angle(units):
    decision = qb1.decide_b1_units(60.0 * B1, units, nominal_flip_deg=60.0)
    assert decision.units == "degrees" and decision.source == "sidecar"
    assert decision.scale_description == "divided by FlipAngle 60°"
    np.testing.assert_allclose(qb1.to_fraction(60.0 * B1, decision), B1, rtol=1e-15)
    np.testing.assert_allclose(qb1.to_fraction(60.0 * B1, decision, 60.0), B1, rtol=1e-15)


@pytest.mark.parametrize("units", DEGREES_X10)
def test_ten_times_degrees_are_divided_by_ten_flip_angles(units):
    famp = 10 * 80.0 * B1  # Siemens tfl_b1map famp of an 80 deg preparation pulse
    decision = qb1.decide_b1_units(famp, units.upper(), nominal_flip_deg=80)
    assert decision.units == "degrees-x10" and decision.warnings == ()
    assert decision.scale_description == "divided by 10 × FlipAngle 80°"
    np.testing.assert_allclose(qb1.to_fraction(famp, decision), B1, rtol=1e-15)


def test_every_recognised_spelling_is_accepted():
    """The table of the module, whatever it has beyond the brief's list."""
    for spelled, canonical in qb1._UNIT_SYNONYMS.items():
        assert canonical in (*qb1.B1_UNIT_CHOICES, "degrees")
        decision = qb1.decide_b1_units(B1, spelled, nominal_flip_deg=60)
        assert decision.units == canonical
    for choice in qb1.B1_UNIT_CHOICES:  # the option values are also valid Units
        assert qb1._UNIT_SYNONYMS[choice] == choice


@pytest.mark.parametrize("units", DEGREES + DEGREES_X10)
@pytest.mark.parametrize("flip", [None, 0.0, -10.0, float("nan")])
def test_degrees_without_a_usable_flip_angle_are_refused(units, flip):
    with pytest.raises(qb1.B1UnitsError, match="FlipAngle") as info:
        qb1.decide_b1_units(800 * B1, units, nominal_flip_deg=flip)
    assert "--b1-units" in str(info.value)


def test_to_fraction_needs_the_flip_it_was_decided_with():
    decision = qb1.decide_b1_units(800 * B1, "deg*10", nominal_flip_deg=80)
    with pytest.raises(ValueError, match="differs"):
        qb1.to_fraction(800 * B1, decision, nominal_flip_deg=90)
    bare = qb1.B1UnitsDecision("degrees-x10", "divided by 10 × FlipAngle", "sidecar", "test")
    with pytest.raises(qb1.B1UnitsError, match="FlipAngle"):
        qb1.to_fraction(800 * B1, bare)
    np.testing.assert_allclose(qb1.to_fraction(800 * B1, bare, 80), B1, rtol=1e-15)


@pytest.mark.parametrize("units", ["Hz", "uT", "percent?", "kelvin", "10"])
def test_unrecognised_units_are_refused_with_the_options(units):
    with pytest.raises(qb1.B1UnitsError) as info:
        qb1.decide_b1_units(100 * B1, units)
    message = str(info.value)
    assert repr(units) in message  # quoted
    assert "'percent'" in message and "'p.u.'" in message and "'deg*10'" in message
    assert "--b1-units fraction|percent|degrees-x10|per-mille" in message


@pytest.mark.parametrize("units", [None, "", "n/a", "N/A", " ", "unknown"])
def test_missing_units_mean_a_guess(units):
    assert qb1.decide_b1_units(100 * B1, units).source == "guess"


# ------------------------------------------------------------------ --b1-units
@pytest.mark.parametrize("choice", qb1.B1_UNIT_CHOICES)
def test_override_beats_the_sidecar(choice):
    scale = {**SCALE, "degrees-x10": 800.0}[choice]
    stored = B1 * scale
    decision = qb1.decide_b1_units(stored, "fraction", override=choice.upper(),
                                   nominal_flip_deg=80)
    assert decision.source == "override" and decision.units == choice
    np.testing.assert_allclose(qb1.to_fraction(stored, decision), B1, rtol=1e-15)
    if choice != "fraction":
        assert "overriding sidecar Units 'fraction'" in decision.reason
    # ... also over a Units the app would refuse, and over the guess's refusal
    assert qb1.decide_b1_units(stored, "Hz", override=choice, nominal_flip_deg=80).units == choice
    assert qb1.decide_b1_units(stored, override=choice, nominal_flip_deg=80).units == choice


def test_bad_overrides_are_refused():
    with pytest.raises(qb1.B1UnitsError, match=r"'kelvin'.*fraction\|percent"):
        qb1.decide_b1_units(B1, override="kelvin")
    with pytest.raises(qb1.B1UnitsError, match="FlipAngle"):
        qb1.decide_b1_units(800 * B1, override="degrees-x10")
    assert qb1.B1_UNIT_CHOICES == ("fraction", "percent", "degrees-x10", "per-mille")
    assert issubclass(qb1.B1UnitsError, ValueError)


# ------------------------------------------------------------------ the guess
@pytest.mark.parametrize(("median", "units"), [
    (0.01, "fraction"), (1.0, "fraction"), (5.0, "fraction"), (5.01, "percent"),
    (100.0, "percent"), (300.0, "percent")])
def test_guess_thresholds(median, units):
    values = np.array([0.0, np.nan, -3.0, median, median])  # median of the finite positive
    decision = qb1.decide_b1_units(values)
    assert decision.units == units and decision.guessed and decision.source == "guess"
    line = decision.describe()
    assert line.startswith("WARNING:") and "no Units key" in line
    assert "<= 5 fraction" in line and "<= 300 percent" in line  # the rule used
    assert f"{median:.4g}" in line


def test_a_percent_guess_says_degrees_would_look_the_same():
    assert "degrees would look the same" in qb1.decide_b1_units(100 * B1).reason


@pytest.mark.parametrize("median", [300.5, 800.0, 1000.0, 5000.0])
def test_ambiguous_medians_are_refused_with_both_readings(median):
    values = np.full(7, median)
    with pytest.raises(qb1.B1UnitsError) as info:
        qb1.decide_b1_units(values)
    message = str(info.value)
    assert "per-mille" in message and "degrees-x10" in message
    assert "--b1-units fraction|percent|degrees-x10|per-mille" in message
    assert f"median B1 {median / 1000:.3g}" in message  # the per-mille reading


def test_ambiguous_refusal_quotes_each_reading_of_800():
    with pytest.raises(qb1.B1UnitsError) as info:
        qb1.decide_b1_units(np.full(5, 800.0), nominal_flip_deg=80)
    message = str(info.value)
    assert re.search(r"per-mille.*median B1 0\.8\b", message)
    assert re.search(r"degrees-x10.*median B1 1 with FlipAngle 80°", message)
    with pytest.raises(qb1.B1UnitsError, match=r"median B1 0\.889-1 for an 80-90°"):
        qb1.decide_b1_units(np.full(5, 800.0))


def test_no_finite_positive_value_is_refused():
    for values in (np.zeros(4), np.array([np.nan, -1.0, np.inf, -np.inf]), np.array([])):
        with pytest.raises(qb1.B1UnitsError, match="no finite positive value"):
            qb1.decide_b1_units(values, "percent")


# ------------------------------------------------------------------ consistency warnings
@pytest.mark.parametrize(("values", "units", "flip"), [
    (B1, "percent", None),            # a fraction declared percent: median B1 0.01
    (4.9 * np.ones(3), "%", None),    # the brief's edge: percent with median <= 5
    (100 * B1, "fraction", None),     # percent declared fraction: median B1 100
    (B1, "per-mille", None),
    (B1, "deg*10", 80.0),             # a fraction declared 10 x degrees
    (800 * B1, "degrees", 80.0),      # famp declared degrees: median B1 10
    (800 * B1, "percent", None),      # famp declared percent: median B1 8
])
def test_units_grossly_contradicted_by_the_values_warn(values, units, flip):
    decision = qb1.decide_b1_units(values, units, nominal_flip_deg=flip)
    assert decision.source == "sidecar"  # the decision stands
    (warning,) = decision.warnings
    assert "the sidecar says" in warning and "median" in warning and "--b1-units" in warning
    _, line = qb1.b1_to_fraction(values, units, nominal_flip_deg=flip)
    assert "WARNING" in line and warning in line


def test_an_override_contradicted_by_the_values_warns_too():
    (warning,) = qb1.decide_b1_units(B1, override="percent").warnings
    assert warning.startswith("--b1-units says percent") and "a fraction" in warning


@pytest.mark.parametrize(("values", "units"), [
    (100 * B1, "percent"), (B1, "fraction"), (1000 * B1, "per-mille"), (5.5 * np.ones(3), "%"),
    (800 * B1, "deg*10")])
def test_consistent_units_do_not_warn(values, units):
    decision = qb1.decide_b1_units(values, units, nominal_flip_deg=80)
    assert decision.warnings == ()


# ------------------------------------------------------------------ conversion and wrapper
def test_to_fraction_zeroes_non_finite_values_and_keeps_the_shape():
    stored = np.array([[[np.nan, 100.0], [np.inf, -np.inf]], [[95.0, 0.0], [-5.0, 110.0]]],
                      dtype=np.float32)
    decision = qb1.decide_b1_units(stored, "percent")
    out = qb1.to_fraction(stored, decision)
    assert out.shape == stored.shape and out.dtype == np.float64
    expected = [[[0.0, 1.0], [0.0, 0.0]], [[0.95, 0.0], [-0.05, 1.1]]]
    np.testing.assert_allclose(out, expected, rtol=1e-7)


def test_b1_to_fraction_is_the_interface_call():
    """``interfaces.qmri`` calls ``b1_to_fraction(array, units)`` and keeps ``(array, str)``."""
    out, line = qb1.b1_to_fraction(np.array([[95.0, np.nan], [0.0, 105.0]]), "percent")
    np.testing.assert_allclose(out, [[0.95, 0.0], [0.0, 1.05]])
    assert line.startswith("B1+ map taken as percent") and "divided by 100" in line
    assert "WARNING" not in line and "1 non-finite value(s) set to 0" in line
    out, line = qb1.b1_to_fraction(np.array([95.0, 105.0]), None)
    assert line.startswith("WARNING:") and "no Units key" in line
    out, line = qb1.b1_to_fraction(800 * B1, None, override="degrees-x10", nominal_flip_deg=80)
    np.testing.assert_allclose(out, B1, rtol=1e-15)
    assert "--b1-units degrees-x10" in line
    with pytest.raises(qb1.B1UnitsError, match="--b1-units"):
        qb1.b1_to_fraction(800 * B1)  # the old "taken as percent" above median 5 is gone


def test_decision_is_frozen_and_describes_itself_on_one_line():
    decision = qb1.decide_b1_units(100 * B1, "p.u.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.units = "fraction"  # type: ignore[misc]
    line = decision.describe()
    assert "\n" not in line
    assert line == "B1+ map taken as percent (sidecar Units 'p.u.'); divided by 100"


# ------------------------------------------------------------------ plausibility
def _head(shape=(20, 20, 20), radius=8.0):
    grid = np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2
    return (grid**2).sum(axis=0) <= radius**2


def test_a_plausible_map_passes():
    head = _head()
    b1 = np.where(head, 1.05, 0.0)
    b1[~head] = np.nan  # outside the head nothing counts
    found = qb1.b1_plausibility(b1, head)
    assert found.ok and found.problems() == []
    assert found.median == pytest.approx(1.05) and found.coverage == 1.0
    assert found.n_head == int(head.sum())


def test_coverage_of_85_percent_is_a_problem_naming_85_percent():
    head = _head()
    n_head = int(head.sum())
    b1 = np.where(head, 0.9, 0.0)
    inside = np.flatnonzero(head)
    n_gap = round(0.15 * n_head)
    b1.flat[inside[:n_gap]] = 0.0  # one side of the head not covered
    b1.flat[inside[n_gap:n_gap + 3]] = np.nan  # NaN is not covered either
    found = qb1.b1_plausibility(b1, head)
    expected = (n_head - n_gap - 3) / n_head
    assert found.coverage == pytest.approx(expected) and found.median == pytest.approx(0.9)
    assert not found.ok
    (problem,) = found.problems()
    assert f"{100 * expected:.1f} %" in problem and round(100 * expected) == 85
    assert "at least 90 % needed" in problem and f"of {n_head} voxels" in problem


def test_an_implausible_median_is_a_problem_naming_it_and_the_limits():
    head = _head()
    for value, text in ((8.8, "median B1+ 8.8"), (0.009, "median B1+ 0.009")):
        found = qb1.b1_plausibility(np.where(head, value, 0.0), head)
        assert found.median == pytest.approx(value) and found.coverage == 1.0
        (problem,) = found.problems()
        assert text in problem and "0.4-1.8" in problem
    both = qb1.b1_plausibility(np.where(head, 95.0, 0.0) * (np.indices(head.shape)[0] > 9),
                               head)
    assert len(both.problems()) == 2  # high median and half coverage
    assert qb1.PLAUSIBLE_MEDIAN_FRACTION == (0.4, 1.8) and qb1.MIN_HEAD_COVERAGE == 0.9


def test_plausibility_limits_are_inclusive():
    head = _head((6, 6, 6), 2.5)
    for value in qb1.PLAUSIBLE_MEDIAN_FRACTION:
        assert qb1.b1_plausibility(np.where(head, value, 0.0), head).ok


def test_plausibility_of_an_empty_or_uncovered_head():
    head = _head()
    empty = qb1.b1_plausibility(np.ones(head.shape), np.zeros(head.shape, bool))
    assert not empty.ok and empty.n_head == 0 and "empty" in empty.problems()[0]
    bare = qb1.b1_plausibility(np.zeros(head.shape), head)
    assert not bare.ok and np.isnan(bare.median) and bare.coverage == 0.0
    assert any("no positive value" in p for p in bare.problems())
    with pytest.raises(ValueError, match="shape"):
        qb1.b1_plausibility(np.ones((3, 3)), np.ones((3, 4), bool))
