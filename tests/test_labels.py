"""Label conventions: detection, conversion both ways, regions."""

from __future__ import annotations

import numpy as np
import pytest

from core.io import labels as L


def stored_map(et_value: int) -> np.ndarray:
    """Small stored label map with every class: NCR=1, ED=2, ET=``et_value``."""
    seg = np.zeros((6, 5, 4), dtype=np.uint8)
    seg[0, :, :] = 1
    seg[1, :, :] = 2
    seg[2, :2, :] = et_value
    return seg


def test_detect_convention_from_values() -> None:
    assert L.detect_convention(stored_map(4)) == "2020"
    assert L.detect_convention(stored_map(3)) == "2023"
    assert L.detect_convention(np.array([0, 1, 2])) is None
    assert L.detect_convention(np.zeros((3, 3, 3))) is None


@pytest.mark.parametrize("values", [[0, 5], [0, -1], [0, 1.5], [0, np.nan], [0, 255]])
def test_detect_convention_rejects_unknown_values(values: list[float]) -> None:
    with pytest.raises(ValueError, match="unknown label"):
        L.detect_convention(np.array(values))


def test_detect_convention_rejects_mixed_3_and_4() -> None:
    with pytest.raises(ValueError, match="3 and 4"):
        L.detect_convention(np.array([0, 3, 4]))


@pytest.mark.parametrize("convention, et", [("2020", 4), ("2023", 3)])
def test_to_internal_maps_et_to_class_3(convention: str, et: int) -> None:
    seg = stored_map(et)
    internal = L.to_internal(seg, convention)
    assert internal.dtype == np.uint8
    np.testing.assert_array_equal(internal[seg == et], L.ET)
    np.testing.assert_array_equal(internal[seg == 1], L.NCR)
    np.testing.assert_array_equal(internal[seg == 2], L.ED)
    np.testing.assert_array_equal(internal[seg == 0], L.BACKGROUND)
    # detected convention gives the same result
    np.testing.assert_array_equal(L.to_internal(seg), internal)


def test_to_internal_does_not_modify_input() -> None:
    seg = stored_map(4)
    before = seg.copy()
    L.to_internal(seg, "2020")
    np.testing.assert_array_equal(seg, before)


@pytest.mark.parametrize(
    "values, convention",
    [([0, 3], "2020"), ([0, 4], "2023"), ([0, 5], "2023"), ([0, 259], "2023"), ([0, -1], "2020"), ([0, 1.5], "2023")],
)
def test_to_internal_rejects_values_outside_the_convention(values: list[float], convention: str) -> None:
    # Regression: with an explicit convention, 5 used to pass through, 259 wrapped to ET and -1 to 255.
    with pytest.raises(ValueError, match=convention):
        L.to_internal(np.array(values), convention)


@pytest.mark.parametrize("convention, et", [("2020", 4), ("2023", 3)])
def test_from_internal_round_trip(convention: str, et: int) -> None:
    stored = stored_map(et)
    internal = L.to_internal(stored, convention)
    back = L.from_internal(internal, convention)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, stored)


def test_convert_between_conventions() -> None:
    np.testing.assert_array_equal(L.convert(stored_map(4), "2020", "2023"), stored_map(3))
    np.testing.assert_array_equal(L.convert(stored_map(3), "2023", "2020"), stored_map(4))


@pytest.mark.parametrize("bad", [[0, 4], [0, -1]])
def test_from_internal_rejects_non_internal_labels(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="0..3"):
        L.from_internal(np.array(bad), "2023")


def test_check_convention_and_label_values() -> None:
    assert L.label_values("2020") == (0, 1, 2, 4)
    assert L.label_values("2023") == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="2021"):
        L.check_convention("2021")


def test_regions_of_internal_labels() -> None:
    labels = np.array([0, 1, 2, 3, 3, 2])
    masks = L.regions(labels)
    np.testing.assert_array_equal(masks["WT"], [False, True, True, True, True, True])
    np.testing.assert_array_equal(masks["TC"], [False, True, False, True, True, False])
    np.testing.assert_array_equal(masks["ET"], [False, False, False, True, True, False])
    with pytest.raises(ValueError, match="region"):
        L.region_mask(labels, "XX")


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).integers(0, 5, (7, 6, 5)).astype(np.uint8),
        np.random.default_rng(1).integers(-3, 3, (7, 6, 5)).astype(np.int16),
        np.random.default_rng(2).integers(0, 300, (7, 6, 5)),  # wide range: sorting path
        np.array([True, False]),
        np.array([0.0, 2.0, 2.0, 1.5]),
        np.array([], dtype=np.uint8),
    ],
)
def test_present_values_matches_unique(array: np.ndarray) -> None:
    assert L.present_values(array) == set(np.unique(array).tolist())
