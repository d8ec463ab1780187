"""The NiiVue viewer/editor as a Streamlit custom component (v1), built from ``app/viewer/frontend/``.

The committed bundle in ``app/viewer/frontend/build`` is served by Streamlit itself (``make frontend``
rebuilds it from ``app/viewer/frontend/src`` with the npm lockfile). Streamlit names the component after this
module: ``app.viewer.component.brats_niivue`` (the iframe's title). Volumes do not travel in the component
arguments: they are registered with Streamlit's media file manager (per session, like an
``st.image``) and the component fetches them by URL, so a rerun resends ~2 KB, not megabytes.

When WebGL2 is missing the component says so and the pages fall back to the PNG viewer
(:func:`available` turns false for the session); AppTest has no browser and always gets the
PNG viewer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from core.io.labels import CLASS_COLOURS
from core.viewer.niivue import display_volume_bytes, label_volume_bytes, uncertainty_volume_bytes, voxel_to_world

BUILD_DIR = Path(__file__).resolve().parent / "frontend" / "build"
VIEWER_ENV = "BRATS_VIEWER"  # "classic" forces the PNG viewer everywhere
NO_WEBGL = "niivue_no_webgl"
_component = components.declare_component("brats_niivue", path=str(BUILD_DIR)) if BUILD_DIR.is_dir() else None


def _in_server() -> bool:
    """A real browser session (AppTest has a runtime too, but no HTTP request headers)."""
    try:
        from streamlit.runtime import Runtime

        return Runtime.exists() and bool(st.context.headers)
    except Exception:  # pragma: no cover - very old / new streamlit
        return False


def available() -> bool:
    """Whether this session shows the NiiVue viewer (bundle built, a real browser session, WebGL2, not opted out)."""
    if _component is None or os.environ.get(VIEWER_ENV, "").lower() == "classic":
        return False
    if st.session_state.get(NO_WEBGL) or st.session_state.get("viewer_classic"):
        return False
    return _in_server()


def media_url(data: bytes, coordinates: str, mimetype: str = "application/gzip") -> str:
    """Serve ``data`` to this session over HTTP (Streamlit's media endpoint); returns its URL path."""
    from streamlit.runtime import Runtime

    return Runtime.instance().media_file_mgr.add(data, mimetype, coordinates)


@st.cache_resource(show_spinner=False, max_entries=8)
def _volume_files(case_key: str, _image: np.ndarray, _affine: np.ndarray) -> list[bytes]:
    """The four modalities as 8-bit ``.nii.gz`` (computed once per case per server)."""
    from core.viewer.render import auto_window

    return [display_volume_bytes(_image[c], _affine, auto_window(_image[c])) for c in range(_image.shape[0])]


@st.cache_resource(show_spinner=False, max_entries=32)
def _label_file(layer_key: str, _labels: np.ndarray, _affine: np.ndarray) -> bytes:
    return label_volume_bytes(_labels, _affine)


@st.cache_resource(show_spinner=False, max_entries=4)
def _uncertainty_file(prediction_key: str, _codes: np.ndarray, _affine: np.ndarray) -> bytes:
    return uncertainty_volume_bytes(_codes, _affine)


@dataclass(frozen=True)
class CompareVolumes:
    """A second set of volumes on the same grid, offered beside the main ones in the viewer bar (e.g. the host
    case beside a sample rendered into it): fetched only when picked, so a flip between the two is client-side."""

    case_key: str  # identifies the image's content (the cache key of its encoded volumes)
    image: np.ndarray  # (C, X, Y, Z), the main image's grid
    names: list[str]
    group: str  # the bar's caption of this set, e.g. "Host"


def _volume_specs(key: str, case_key: str, image: np.ndarray, affine: np.ndarray, names: list[str],
                  group: str = "") -> list[dict[str, str]]:
    """The component's volume list: a display name, a media URL, and the bar group (unique ``name`` per group)."""
    files = _volume_files(case_key, image, affine)
    tag = f"{group}:" if group else ""
    return [{"name": f"{tag}{name}", "label": name, "group": group, "url": media_url(data, f"{key}.{tag}vol{i}")}
            for i, (name, data) in enumerate(zip(names, files))]


def viewer(
    *,
    key: str,
    case_key: str,
    image: np.ndarray,
    affine: np.ndarray,
    names: list[str],
    active: int,
    group: str = "",
    compare: CompareVolumes | None = None,
    labels: np.ndarray | None,
    labels_key: str,
    labels_token: str,
    editable: bool = False,
    epoch: str = "",
    acked_revs: dict[str, int] | None = None,
    history_limit: int = 30,
    opacity: float = 0.5,
    visible: tuple[int, ...] = (1, 2, 3),
    cursor: tuple[int, int, int] | None = None,
    uncertainty: np.ndarray | None = None,
    uncertainty_key: str = "",
    height: int = 620,
    on_change: Callable[[], None] | None = None,
) -> Any:
    """Show the NiiVue viewer; returns the component's last value (edits not yet acknowledged, cursor).

    Args:
        key: widget key (stable, so the browser keeps its WebGL state between reruns).
        case_key: changes when the case changes (the browser then drops its images).
        image: ``(4, X, Y, Z)`` modalities; ``names`` their labels; ``active`` the one shown first.
        group: the bar's caption of ``image``'s volumes when ``compare`` adds a second set (e.g. "Sample").
        compare: another set of volumes on the same grid, switchable in the viewer bar (no Python rerun).
        labels: label map on the case grid shown as the drawing layer (``None``: no labels).
        labels_key: identifies the label map's content (cache key of its file).
        labels_token: changes when the browser must reload the labels (a server-side change).
        editable: drawing tools on; edits come back in the value, tagged with ``epoch``, the tab's ``client``
            id and a revision; ``acked_revs`` is the last revision applied per client (each tab reads its own).
        history_limit: undo steps the editor keeps (the browser shows at most this many of its own undos at once).
        cursor: initial crosshair voxel (the browser keeps its own cursor per case after that).
        uncertainty: WT/TC/ET probability codes ``(X, Y, Z, 3)`` of a prediction (``Prediction.probability_codes``):
            the viewer bar gets an *Uncertainty* toggle that overlays their per-voxel uncertainty
            (``core.viewer.niivue.uncertainty_map``); ``uncertainty_key`` identifies them (the prediction's key).
    """
    assert _component is not None, f"{BUILD_DIR} is missing: run `make frontend`"
    volumes = _volume_specs(key, case_key, image, affine, names, group if compare is not None else "")
    if compare is not None:
        if compare.image.shape[1:] != image.shape[1:]:
            raise ValueError(f"compared volumes {compare.image.shape[1:]} are not on the image's grid "
                             f"{image.shape[1:]}")
        volumes += _volume_specs(key, compare.case_key, compare.image, affine, compare.names, compare.group)
    labels_url = media_url(_label_file(labels_key, labels, affine), f"{key}.labels") if labels is not None else ""
    uncertainty_url = (media_url(_uncertainty_file(uncertainty_key, uncertainty, affine), f"{key}.uncertainty")
                       if uncertainty is not None else "")
    colours = [[0, 0, 0]] + [list(CLASS_COLOURS[label]) for label in (1, 2, 3)]
    return _component(
        key=key, on_change=on_change, default=None,
        case_key=case_key, volumes=volumes, active=int(active), labels_url=labels_url,
        labels_token=labels_token if labels is not None else "", editable=bool(editable), epoch=epoch,
        acked_revs={str(k): int(v) for k, v in (acked_revs or {}).items()}, history_limit=int(history_limit),
        opacity=float(opacity),
        visible=list(visible), colors=colours, uncertainty_url=uncertainty_url,
        cursor_mm=voxel_to_world(cursor, affine) if cursor is not None else None, height=int(height),
        world_to_voxel=np.linalg.inv(np.asarray(affine, float))[:3].tolist(),
    )


def note_webgl(value: Any) -> None:
    """Remember for the session when the browser reported no WebGL2 (the pages then use PNG images)."""
    if isinstance(value, dict) and value.get("webgl") is False:
        st.session_state[NO_WEBGL] = True
