"""Generate page, 'into this case' (issue 13): one click renders the mask into the loaded case (AppTest, tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

from app import state as app_state
from core.synthesis.insert import plan_insertion
from tests.test_app import TINY_AFFINE, _errors, app, model_dir, tiny_app  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def tiny_insertion_path(model_dir):  # noqa: F811
    from core.synthesis.vaegan import build_insertion_model

    path = model_dir / "insertion.keras"
    build_insertion_model(4, 2).save(path)
    return path


def test_render_into_this_case_side_by_side(tiny_app, tiny_insertion_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BRATS_INSERTION_WEIGHTS", str(tiny_insertion_path))
    at = tiny_app
    at.switch_page("pages/generate.py").run()
    assert not at.exception and not at.warning
    assert at.radio(key="gen_mode").value == app_state.INTO_CASE  # the default when a case is loaded
    assert at.button(key="gen_run").label == "Render into this case"
    assert at.selectbox(key="gen_mask").value == "Reference"
    at.number_input(key="gen_seed").set_value(2)
    at.button(key="gen_run").click().run()
    assert not at.exception and not _errors(at)
    samples = at.session_state["studio"].samples
    assert samples.mode == app_state.INTO_CASE and len(samples.cases) == 2
    case = at.session_state["studio"].case
    region = plan_insertion(case, samples.cases[0].seg).region_on_host()
    for sample in samples.cases:
        assert np.allclose(sample.affine, TINY_AFFINE)
        assert np.array_equal(sample.image[:, ~region], case.image[:, ~region])  # untouched outside R
        assert not np.array_equal(sample.image[:, region], case.image[:, region])
    assert {"**Original**", "**Generated**"} <= {m.value for m in at.markdown}  # side by side
