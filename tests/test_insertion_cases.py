"""train.insertion_cases: synthetic training cases made by inserting other cases' tumours (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.io.case import load_case, save_case
from core.synthesis.vaegan import build_insertion_model
from train import insertion_cases as ic


def test_plan_never_uses_the_host_as_donor_and_is_deterministic():
    hosts = [f"case{i}" for i in range(5)]
    plan = ic.plan_insertions(hosts, per_host=3, seed=7)
    assert len(plan) == 15 and len({p.name for p in plan}) == 15
    assert all(p.donor != p.host for p in plan)
    for host in hosts:  # distinct donors per host while there are enough
        donors = [p.donor for p in plan if p.host == host]
        assert len(set(donors)) == 3
    assert plan == ic.plan_insertions(hosts, per_host=3, seed=7)
    assert plan != ic.plan_insertions(hosts, per_host=3, seed=8)
    assert {p.mirror for p in ic.plan_insertions(hosts, per_host=4, seed=1)} == {True, False}
    with pytest.raises(ValueError, match="at least two"):
        ic.plan_insertions(["only"], 1, 0)
    with pytest.raises(ValueError, match="per_host"):
        ic.plan_insertions(hosts, 0, 0)


def test_target_is_the_donor_map_mirrored_and_clipped_to_the_host_brain():
    image = np.zeros((4, 12, 8, 6), np.float32)
    image[:, 1:7, 1:7, 1:5] = 1.0  # the host's brain: rows 1-6
    seg = np.zeros((12, 8, 6), np.uint8)
    seg[2:4, 3, 3] = 2
    seg[9, 3, 3] = 3  # outside the host's brain
    plain = ic.target_map(image, seg, mirror=False)
    assert plain[2:4, 3, 3].tolist() == [2, 2] and plain[7:].max() == 0
    mirrored = ic.target_map(image, seg, mirror=True)  # row x -> 11 - x
    assert mirrored[2, 3, 3] == 3 and mirrored[7:].max() == 0 and mirrored.dtype == np.uint8


def test_cli_writes_labelled_folders_that_keep_the_hosts_geometry(tmp_path):
    from tests.test_cvae import one_mm_toy_case

    real = tmp_path / "real"
    for i in range(3):
        save_case(one_mm_toy_case(40 + i, f"toy-{i}"), real)
    build_insertion_model(base_filters=4, latent_channels=2, seed=0).save(tmp_path / "ins.keras")
    out = tmp_path / "synth"
    argv = [str(real), "-o", str(out), "--exclude", "toy-2", "--seed", "3", "--insertion", str(tmp_path / "ins.keras")]
    assert ic.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 == len(manifest["cases"])  # toy-2 (validation) is neither host nor donor
    for item in manifest["cases"]:
        assert "toy-2" not in (item["host"], item["donor"])
        host, donor = load_case(real / item["host"]), load_case(real / item["donor"])
        sample = load_case(out / item["name"])
        np.testing.assert_array_equal(sample.affine, host.affine)
        expected = ic.target_map(host.image, donor.seg, item["mirror"])
        np.testing.assert_array_equal(sample.seg, expected)
        assert not np.array_equal(sample.image, host.image)
    assert not (out / ".partial").exists()
    stamp = folders[0].stat().st_mtime_ns
    assert ic.main(argv) == 0  # rerun keeps finished cases
    assert folders[0].stat().st_mtime_ns == stamp
    assert ic.main([str(real), "-o", str(tmp_path / "x"), "--exclude", "toy-0,toy-1"]) == 2  # one case: no donor


def test_plan_draws_donors_only_from_the_given_kind():
    hosts = [f"case{i}" for i in range(6)]
    plan = ic.plan_insertions(hosts, per_host=2, seed=4, donors=["case1", "case4"])
    assert {p.donor for p in plan} == {"case1", "case4"}
    assert all(p.donor != p.host for p in plan) and len(plan) == 12
    assert [p.donor for p in plan if p.host == "case1"] == ["case4", "case4"]  # its only other donor
    assert len(ic.plan_insertions(hosts, per_host=1, seed=4, donors=["case2"])) == 5  # case2 gets no insertion
    with pytest.raises(ValueError, match="not found: elsewhere"):
        ic.plan_insertions(hosts, 1, 0, donors=["case1", "elsewhere"])


def test_donors_of_kind_reads_each_reference(tmp_path):
    from tests.test_cvae import one_mm_toy_case

    folders = {}
    for i in range(3):
        case = one_mm_toy_case(60 + i, f"toy-{i}")
        if i == 1:  # no enhancing tumour: ET becomes necrosis
            case.seg[case.seg == 3] = 1
        else:  # 1 mL of enhancing tumour (the kind's bound is 0.5 mL)
            case.seg[4:14, 4:14, 4:14] = 3
        save_case(case, tmp_path)
        folders[case.name] = tmp_path / case.name
    assert ic.donors_of_kind(folders, "any") is None
    assert ic.donors_of_kind(folders, "no-ET") == ["toy-1"]
    folders.pop("toy-1")
    with pytest.raises(ValueError, match="no-ET"):
        ic.donors_of_kind(folders, "no-ET")
