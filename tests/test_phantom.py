"""Synthetic glioma phantoms (core.synthesis.phantom, the core.phantom CLI) and their template anatomy
(core.synthesis.anatomy).

Generating a phantom takes ~1-2 s, so the file makes three: two module-scoped fixtures (an
enhancing and a non-enhancing/two-lesion configuration) and the CLI's run of the first seed,
which doubles as the determinism check.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from core import phantom as phantom_cli
from core.io.case import MODALITIES, Case, find_case_files, load_case
from core.io.labels import ED, ET, NCR
from core.synthesis import phantom
from core.synthesis.anatomy import BRATS_AFFINE, BRATS_SHAPE, _read_cache, _write_cache, load_anatomy
from core.synthesis.phantom import PhantomConfig, generate_phantom, generate_phantom_with_tissue

SEED_A, SEED_B = 11, 12
# Full thin rim, one lesion: there is necrosis and every NCR voxel must be wrapped in ET.
CONFIG_A = PhantomConfig(wt_volume_ml=(20.0, 60.0), p_two_lesions=0.0, p_no_enhancement=0.0, p_partial_rim=0.0,
                         rim_mm=(2.0, 3.5))
# LGG-like: no enhancement, two lesions.
CONFIG_B = PhantomConfig(wt_volume_ml=(30.0, 90.0), p_two_lesions=1.0, p_no_enhancement=1.0)
CSF, GM, WM = 1, 2, 3


@pytest.fixture(scope="module")
def enhancing() -> tuple[Case, np.ndarray]:
    return generate_phantom_with_tissue(SEED_A, CONFIG_A)


@pytest.fixture(scope="module")
def non_enhancing() -> tuple[Case, np.ndarray]:
    return generate_phantom_with_tissue(SEED_B, CONFIG_B)


@pytest.fixture(params=["enhancing", "non_enhancing"])
def any_phantom(request: pytest.FixtureRequest) -> tuple[Case, np.ndarray, PhantomConfig]:
    config = CONFIG_A if request.param == "enhancing" else CONFIG_B
    return (*request.getfixturevalue(request.param), config)


# --------------------------------------------------------------------------- anatomy


def test_anatomy_on_brats_grid_like_real_brains(real_root):
    anat = load_anatomy()
    assert anat.gm.shape == anat.wm.shape == anat.csf.shape == anat.brain.shape == BRATS_SHAPE
    np.testing.assert_array_equal(anat.affine, BRATS_AFFINE)
    total = anat.gm + anat.wm + anat.csf
    assert total.max() <= 1.0 + 2 / 255 and min(anat.gm.min(), anat.wm.min(), anat.csf.min()) >= 0
    assert total[~ndi.binary_dilation(anat.brain, iterations=2)].max() < 0.01, "tissue outside the brain mask"
    assert 1.2e6 < anat.brain.sum() < 1.9e6  # ~1.2-1.9 L like adult skull-stripped brains
    centre = np.argwhere(anat.brain).mean(axis=0)
    centroids = []
    for case_dir in sorted(p for p in real_root.iterdir() if p.is_dir()):
        brain = np.asanyarray(nib.load(find_case_files(case_dir)["t1"]).dataobj) > 0
        centroids.append(np.argwhere(brain).mean(axis=0))
        # each real brain: within 12 voxels (27 cases: at most 10.9, a brain whose top is cut off)
        assert np.abs(centroids[-1] - centre).max() < 12, f"template brain centroid {centre} vs {case_dir.name}"
    # the typical real brain (median centroid, 27 cases: within 3.3 voxels) sits where the template does
    assert np.abs(np.median(centroids, axis=0) - centre).max() < 5


def test_anatomy_cache_roundtrip(tmp_path):
    anat = load_anatomy()
    maps = {"gm": anat.gm, "wm": anat.wm, "csf": anat.csf, "brain": anat.brain}
    path = tmp_path / "cache" / "anatomy.npz"
    _write_cache(path, maps)
    assert [p.name for p in path.parent.iterdir()] == ["anatomy.npz"], "temporary file left behind"
    back = _read_cache(path)
    assert back is not None
    for key, value in maps.items():
        np.testing.assert_array_equal(back[key], value)  # loaded maps are already quantised: exact
    path.write_bytes(b"not an npz")
    assert _read_cache(path) is None


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [{"p_two_lesions": 1.5}, {"wt_volume_ml": (50.0, 10.0)}, {"strength": -1.0}, {"tc_fraction": (0.2, 1.5)}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="PhantomConfig"):
        PhantomConfig(**kwargs)


# --------------------------------------------------------------------------- the case itself


def test_case_geometry_and_types(enhancing):
    case, _ = enhancing
    assert case.image.shape == (len(MODALITIES), *BRATS_SHAPE) and case.image.dtype == np.float32
    assert case.seg is not None and case.seg.shape == BRATS_SHAPE and case.seg.dtype == np.uint8
    np.testing.assert_array_equal(case.affine, BRATS_AFFINE)
    np.testing.assert_array_equal(case.header.get_best_affine(), BRATS_AFFINE)
    assert case.spacing == (1.0, 1.0, 1.0)
    assert case.name == f"phantom-{SEED_A:05d}"
    assert np.isfinite(case.image).all()


def test_different_seeds_differ(enhancing, non_enhancing):
    assert not np.array_equal(enhancing[0].seg, non_enhancing[0].seg)
    assert not np.array_equal(enhancing[0].image[0], non_enhancing[0].image[0])
    assert not np.array_equal(enhancing[1], non_enhancing[1]), "anatomy should be deformed differently"


def test_labels_and_volume(any_phantom):
    case, _, config = any_phantom
    seg = case.seg
    assert set(np.unique(seg).tolist()) <= {0, NCR, ED, ET}
    wt_ml = np.count_nonzero(seg) / 1000.0
    low, high = config.wt_volume_ml
    assert low * 0.99 <= wt_ml <= high * 1.01
    tc = np.isin(seg, (NCR, ET)).sum() / 1000.0
    assert config.tc_fraction[0] * wt_ml * 0.95 <= tc <= config.tc_fraction[1] * wt_ml * 1.05
    assert (seg == ED).any()


def test_background_zero_and_tumour_inside_brain(any_phantom):
    case, tissue, _ = any_phantom
    brain = tissue > 0
    image = case.image
    assert (image[:, ~brain] == 0).all(), "background must be exactly 0"
    assert (image[:, brain] > 0).all(), "every brain voxel must be non-zero in every modality"
    assert brain[case.seg > 0].all(), "tumour outside the brain"


def test_enhancing_rim_wraps_necrosis(enhancing):
    seg = enhancing[0].seg
    ncr, et = seg == NCR, seg == ET
    assert et.any() and ncr.any()
    neighbours = ndi.binary_dilation(ncr) & ~ncr  # 6-connected shell around the necrosis
    assert neighbours.any() and et[neighbours].all(), "NCR must be wrapped in ET when the rim is complete"


def test_non_enhancing_lesions(non_enhancing):
    seg = non_enhancing[0].seg
    assert not (seg == ET).any() and (seg == NCR).any()
    cores, n = ndi.label(seg == NCR)
    assert n >= 2, "two lesions were asked for"


def _mean(volume: np.ndarray, where: np.ndarray) -> float:
    assert where.sum() > 100
    return float(volume[where].mean())


def _surroundings(seg: np.ndarray, tissue: np.ndarray, label: int) -> np.ndarray:
    """Healthy voxels of one tissue 3-12 mm around the tumour: a local reference unaffected by the bias field."""
    tumour = seg > 0
    shell = ndi.binary_dilation(tumour, iterations=12) & ~ndi.binary_dilation(tumour, iterations=3)
    return shell & (tissue == label)


def test_radiological_contrast(any_phantom):
    case, tissue, _ = any_phantom
    seg = case.seg
    healthy = (seg == 0) & ~ndi.binary_dilation(seg > 0, iterations=2)
    t1, _, t2, flair = (case.modality(m) for m in MODALITIES)
    mean = {
        (name, t): _mean(vol, healthy & (tissue == t))
        for name, vol in (("t1", t1), ("t2", t2), ("flair", flair))
        for t in (CSF, GM, WM)
    }
    assert mean["t1", WM] > mean["t1", GM] > mean["t1", CSF]
    assert mean["t2", CSF] > mean["t2", GM] > mean["t2", WM]
    assert mean["flair", CSF] < mean["flair", WM] and mean["flair", CSF] < mean["flair", GM]
    near_wm = _surroundings(seg, tissue, WM)
    assert _mean(flair, seg == ED) > 1.1 * _mean(flair, near_wm)
    assert _mean(t2, seg == ED) > 1.1 * _mean(t2, near_wm)
    assert _mean(t1, seg == NCR) < _mean(t1, near_wm)


def test_core_contrast_differs_from_edema(any_phantom):
    """The core (interior, away from the blurred rim) is darker on T1 and FLAIR and brighter on T2 than edema,
    as in real gliomas: otherwise severe edema and non-enhancing core look alike."""
    case, _, _ = any_phantom
    core = ndi.binary_erosion(case.seg == NCR, iterations=1)
    edema = case.seg == ED
    t1, _, t2, flair = (case.modality(m) for m in MODALITIES)
    assert _mean(t1, core) < _mean(t1, edema)
    assert _mean(flair, core) < _mean(flair, edema)
    assert _mean(t2, core) > _mean(t2, edema)


@pytest.mark.parametrize("strength", [1.0, 2.0])
def test_tissue_means_keep_tumour_ordering(strength):
    rng = np.random.default_rng(0)
    col = {t: phantom._TISSUES.index(t) for t in ("wm", "ncr", "necrosis", "ed", "et")}
    for _ in range(200):
        m = phantom._tissue_means(rng, strength)  # rows t1, t1ce, t2, flair
        assert m[0, col["ed"]] >= 1.12 * m[0, col["ncr"]] - 1e-6
        assert m[1, col["wm"]] >= 1.08 * m[1, col["ed"]] - 1e-6
        assert m[2, col["ncr"]] >= 1.12 * m[2, col["ed"]] - 1e-6
        assert m[3, col["ed"]] >= 1.1 * m[3, col["ncr"]] - 1e-6
        assert m[1, col["et"]] >= 1.4 * m[1, col["wm"]] - 1e-6


def test_enhancement_contrast(enhancing):
    case, tissue = enhancing
    t1ce = case.modality("t1ce")
    et = _mean(t1ce, case.seg == ET)
    assert et > _mean(t1ce, case.seg == NCR)  # NCR is partly blurred with its rim: only ordering is robust
    assert et > 1.1 * _mean(t1ce, _surroundings(case.seg, tissue, WM))


def test_progress_reports(monkeypatch):
    calls: list[tuple[float, str]] = []
    # Only the progress plumbing is checked here: stop after the first report.
    monkeypatch.setattr(phantom, "_plan_geometry", lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        generate_phantom(0, progress=lambda f, m: calls.append((f, m)))
    assert calls and 0.0 <= calls[0][0] <= 1.0 and isinstance(calls[0][1], str)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_loadable_cases_and_is_deterministic(tmp_path, enhancing, non_enhancing, monkeypatch, capsys):
    # 2023 naming: a real run of seed A with CONFIG_A, which must reproduce the fixture bit for bit.
    monkeypatch.setattr(phantom_cli, "PhantomConfig", lambda strength: dataclasses.replace(CONFIG_A, strength=strength))
    assert phantom_cli.main([str(tmp_path / "a"), "--count", "1", "--seed", str(SEED_A), "--naming", "2023"]) == 0
    assert "per case" in capsys.readouterr().out
    folders = sorted((tmp_path / "a").iterdir())
    assert [f.name for f in folders] == [phantom_cli.brats_case_name(SEED_A, "2023")]
    loaded = load_case(folders[0])
    assert loaded.naming == "2023" and set(find_case_files(folders[0])) == {*MODALITIES, "seg"}
    np.testing.assert_array_equal(loaded.affine, BRATS_AFFINE)
    np.testing.assert_array_equal(loaded.image, enhancing[0].image)
    np.testing.assert_array_equal(loaded.seg, enhancing[0].seg)

    # 2020 naming, two cases (seeds A and A+1): the generator is stubbed with small crops of the
    # fixtures to stay fast (the full-size round trip is checked above).
    crop = (slice(None), slice(100, 132), slice(100, 132), slice(60, 92))
    fixtures = {
        seed: dataclasses.replace(c, image=c.image[crop].copy(), seg=c.seg[crop[1:]].copy())
        for seed, c in ((SEED_A, enhancing[0]), (SEED_A + 1, non_enhancing[0]))
    }
    monkeypatch.setattr(phantom_cli, "generate_phantom", lambda seed, config=None: fixtures[seed])
    assert phantom_cli.main([str(tmp_path / "b"), "--count", "2", "--seed", str(SEED_A), "--naming", "2020"]) == 0
    folders = sorted((tmp_path / "b").iterdir())
    assert [f.name for f in folders] == [phantom_cli.brats_case_name(s, "2020") for s in (SEED_A, SEED_A + 1)]
    for folder, seed in zip(folders, (SEED_A, SEED_A + 1)):
        case = load_case(folder)
        assert case.naming == "2020" and case.label_convention in ("2020", None)
        np.testing.assert_array_equal(case.seg, fixtures[seed].seg)

