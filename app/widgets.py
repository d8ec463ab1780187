"""Shared widgets of the BraTS Studio pages: sidebar, linked 3-plane viewer, tables, 3D surfaces, NiiVue wrapper.

The viewer renders inside an ``st.fragment`` (moving a slider reruns only the viewer) and caches
every rendered slice as PNG bytes keyed on the case, slice and display settings, so scrolling
back and forth is served from memory.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app import actions, models, persistence
from app import state as app_state
from app.state import Layer, Samples, Studio
from core.io.case import MODALITIES, Case
from core.io.labels import CLASS_COLOURS, CLASS_NAMES, ED, REGION_COLOURS, REGIONS
from core.viewer.render import (
    PLANES,
    DisplayGeometry,
    auto_window,
    display_size,
    display_view,
    png_bytes,
    region_surfaces,
    render_plane,
    screen_to_slice,
    window_from_level,
)

try:  # click-to-move-the-cursor; the viewer falls back to plain images without it
    from streamlit_image_coordinates import streamlit_image_coordinates
except ImportError:  # pragma: no cover - it is in requirements.txt
    streamlit_image_coordinates = None

MODALITY_LABELS = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


def label_chip(label: int) -> str:
    """Markdown of a label's colour swatch and short name (label 0 reads "Erase")."""
    if label == 0:
        return ":gray[□] Erase"
    r, g, b = CLASS_COLOURS[label]
    return f':color[■]{{foreground="#{r:02x}{g:02x}{b:02x}"}} {CLASS_NAMES[label]}'


LABEL_TOGGLES = {label: label_chip(label) for label in (1, 2, 3)}
LAYOUTS = ("3 planes", "4 modalities", "Side by side")
VIEW_PIXELS = 480  # longest side of a rendered plane (server side; the browser scales to the column)
NO_OVERLAY = "None"


@st.cache_data(show_spinner=False, max_entries=64)
def window_for(image_key: str, channel: int, _volume: np.ndarray) -> tuple[float, float]:
    """Automatic window (0.5-99.5 % of the brain) of one modality, computed once per case."""
    return auto_window(_volume)


@st.cache_data(show_spinner=False, max_entries=64)
def intensity_range(image_key: str, channel: int, _volume: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum of one modality (manual window slider bounds)."""
    low, high = float(_volume.min()), float(_volume.max())
    return low, high if high > low else low + 1.0


# --------------------------------------------------------------------------- page scaffolding


def show_flash() -> None:
    """Show (once) the messages queued by the previous run's actions."""
    state = app_state.studio()
    for kind, message in state.flash:
        getattr(st, kind)(message)
    state.flash.clear()


def require_case() -> Studio | None:
    """The session's studio when a case is loaded; otherwise a hint to load one and ``None``."""
    state = app_state.studio()
    if state.case is None:
        st.info("No case loaded yet. Load the built-in demo case, upload a case or open a folder first.")
        st.page_link("pages/load.py", label="Go to Load", icon=":material/upload_file:")
        return None
    persistence.sync_edits(state)  # edits another tab of this session saved meanwhile
    return state


def progress_reporter(bar: Any) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` callback that drives an ``st.progress`` bar (with elapsed time)."""
    start = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        bar.progress(float(np.clip(fraction, 0.0, 1.0)), text=f"{message} · {time.perf_counter() - start:.1f} s")

    return report


def follow_job(job: Any) -> None:
    """Show a background run's progress with a Cancel button until it ends, then rerun to show its result.

    Leaving the page or reloading stops only this display: the run goes on, and any page collects
    its result (``actions.collect_jobs``) on its next run.
    """
    bar = st.progress(job.fraction, text=f"{job.message} · {job.elapsed:.1f} s")
    cols = st.columns([1, 4])
    cols[0].button("Cancel", key=f"cancel_{job.kind}", on_click=job.cancel, icon=":material/cancel:",
                   disabled=job.cancel_requested)
    cols[1].caption("Runs on the server: you can leave this page or reload, the result is kept and shown when "
                    "you come back.")
    while job.running:
        bar.progress(job.fraction, text=f"{job.message} · {job.elapsed:.1f} s")
        time.sleep(0.2)
    actions.collect_jobs()
    st.rerun()


def _switch(case_id: str) -> None:
    error = persistence.switch_case(case_id)
    if error:
        app_state.flash("error", f"Could not reopen the case: {error}")
    else:
        app_state.flash("success", f"Switched to **{app_state.studio().case.name}** with its saved work.")


def recent_cases(entries: list[dict[str, Any]]) -> None:
    """The session's other saved cases (nothing is lost by loading another case), each with a Switch button."""
    if not entries:
        return
    st.divider()
    st.subheader("Recent cases in this session")
    st.caption("Loading a case never discards the previous one: its prediction, edits and samples are saved "
               "on the server and come back when you switch to it.")
    for entry in entries:
        held = [what for what, present in (("prediction", entry["prediction"]), ("edited mask", entry["edited"]))
                if present]
        if entry["samples"]:
            held.append(f"{entry['samples']} sample(s)")
        cols = st.columns([3, 1])
        cols[0].markdown(f"**{entry['name']}** · {', '.join(held) or 'no results yet'} · saved "
                         f"{time.strftime('%H:%M', time.localtime(entry['saved']))}")
        cols[1].button("Switch to it", key=f"switch_{entry['case_id']}", on_click=_switch, args=(entry["case_id"],),
                       use_container_width=True)


def session_data() -> None:
    """How long this session's data stays on the server, and a button that deletes it now (asks once more)."""
    if persistence.session_store() is None:
        return
    st.divider()
    st.subheader("This session's data on the server")
    days = persistence.retention_days()
    st.caption(f"Your cases (uploaded files included), predictions, edits and samples are kept on the server, "
               f"readable by its account only, for {days:g} day(s) after you last use them, then removed.")
    if not st.session_state.get("confirm_delete"):
        if st.button("Delete this session's data now", key="delete_session", icon=":material/delete_forever:"):
            st.session_state["confirm_delete"] = True
            st.rerun()
        return
    st.warning("This removes every case of this session from the server and from this page: it cannot be undone.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete it now", type="primary", key="delete_session_confirm", use_container_width=True):
        error = persistence.delete_session_data()
        if error:
            st.error(f"Could not delete everything: {error}")
            return
        app_state.flash("success", "This session's data was deleted from the server; you are in a new, empty session.")
        st.rerun()
    if no.button("Cancel", key="delete_session_cancel", use_container_width=True):
        st.session_state["confirm_delete"] = False
        st.rerun()


CANVAS_COMPONENT = "streamlit-drawable-canvas.streamlit_drawable_canvas"
_canvas_registries: set[int] = set()


def canvas_without_toolbar() -> None:
    """Register the drawing canvas (``streamlit-drawable-canvas``) once per runtime with its own toolbar hidden.

    That toolbar's undo, trash and edit buttons act on the canvas alone: they never changed the
    mask (strokes are applied on mouse-up), and after "edit" strokes painted nothing. The Edit
    page's Undo / Redo / Clear slice buttons are the real ones. A definition registered in the
    runtime takes precedence over the package's; only its CSS differs (one rule added).
    """
    from pathlib import Path

    import streamlit_drawable_canvas
    from streamlit.runtime import Runtime

    registry = id(Runtime.instance().bidi_component_registry) if Runtime.exists() else 0
    if registry in _canvas_registries:
        return
    build = Path(streamlit_drawable_canvas.__file__).parent / "frontend" / "build"
    css = "\n".join(p.read_text() for p in sorted(build.glob("*.css")))
    st.components.v2.component(CANVAS_COMPONENT, js="index-*.js", html='<div class="canvas-root"></div>',
                               css=css + "\n.dc-toolbar { display: none !important; }\n")
    _canvas_registries.add(registry)


def default_convention(state: Studio) -> str:
    """Label convention offered first for downloads: the loaded case's own (its seg file or names), else 2023."""
    case = state.case
    for candidate in (case.label_convention if case else None, case.naming if case else None):
        if candidate in ("2020", "2023"):
            return candidate
    return "2023"


def convention_label(convention: str) -> str:
    """How a label convention reads in a selectbox."""
    return f"BraTS {convention} ({'ET=4' if convention == '2020' else 'ET=3'})"


def sidebar() -> None:
    """Current case, label maps and model weights (with their model cards)."""
    state = app_state.studio()
    with st.sidebar:
        st.subheader("Case")
        case = state.case
        if case is None:
            st.caption("No case loaded.")
        else:
            st.markdown(f"**{case.name}**")
            st.caption(
                f"{' × '.join(map(str, case.shape))} voxels · "
                f"{' × '.join(f'{s:g}' for s in case.spacing)} mm"
            )
            layers = state.layers()
            ref = app_state.REFERENCE in layers
            convention = f" ({case.label_convention} labels)" if ref and case.label_convention else ""
            lines = [
                f"{_tick(ref)} reference segmentation{convention}",
                f"{_tick(app_state.PREDICTION in layers)} U-Net prediction",
                f"{_tick(app_state.EDITED in layers)} edited mask",
            ]
            if state.samples is not None:
                lines.append(f"{_tick(True)} {len(state.samples.cases)} synthetic sample(s)")
            st.markdown("  \n".join(lines))
            if case.files:
                with st.expander("Files"):
                    st.markdown("  \n".join(f"`{key}`: {name}" for key, name in case.files.items()))
        for running in app_state.job_registry().running(state.sid or "local"):
            st.progress(running.fraction, text=f"{running.kind.capitalize()}: {running.message} "
                                               f"({running.elapsed:.0f} s)")
        st.subheader("Models")
        for kind in ("unet", "cvae"):
            _weights_status(models.weights_info(kind))


def _tick(present: bool) -> str:
    return ":green[✓]" if present else ":gray[–]"


def _weights_status(info: models.WeightsInfo) -> None:
    if not info.exists:
        st.warning(info.missing_message)
        return
    st.markdown(f"**{models.MODEL_NAMES[info.kind]}**  \n`{info.label}`{info.source_note}")
    card = info.card
    if not card:
        st.caption("No model card (JSON) beside the weights.")
        return
    summary = model_card_summary(card)
    if summary:
        st.caption(summary)
    with st.expander("Model card"):
        st.json(card, expanded=False)


def model_card_summary(card: dict[str, Any]) -> str:
    """One line from a model card (``train.unet`` / ``train.cvae``): training data, steps, validation."""
    parts = []
    if card.get("data"):
        parts.append(f"Trained on {card['data']}")
    if card.get("step") is not None:
        planned = f" of {card['steps_planned']}" if card.get("steps_planned") else ""
        parts.append(f"{card['step']}{planned} steps")
    validation = card.get("validation")
    if isinstance(validation, dict):
        dice = validation.get("dice")
        if isinstance(dice, dict) and dice:
            scores = ", ".join(f"{region} {float(value):.3f}" for region, value in dice.items())
            parts.append(f"validation Dice {scores}")
        elif isinstance(dice, (int, float)):
            parts.append(f"validation Dice {dice:.3f}")
        if validation.get("cases"):
            parts.append(f"on {validation['cases']}")
    else:
        loss = (card.get("losses") or {}).get("val_rec")
        if loss is not None:
            parts.append(f"validation reconstruction L1 {float(loss):.3f}")
        if isinstance(validation, str) and validation != "none":
            parts.append(f"({validation})")
    return " · ".join(parts)


# --------------------------------------------------------------------------- tables


VOLUME_ROWS = (*REGIONS, "NCR", "ED")


def volumes_table(layers: dict[str, Layer], spacing: tuple[float, float, float]) -> pd.DataFrame:
    """Volumes (mL) of each label layer: rows WT/TC/ET and the NCR / ED sub-regions, one column per layer."""
    data = {name: _volumes(layer.key, spacing, layer.labels) for name, layer in layers.items()}
    frame = pd.DataFrame(data, index=list(VOLUME_ROWS))
    frame.index.name = "volume (mL)"  # the header over WT/TC/ET says the unit
    return frame


@st.cache_data(show_spinner=False, max_entries=64)
def _volumes(layer_key: str, spacing: tuple[float, float, float], _labels: np.ndarray) -> dict[str, float]:
    from core.segmentation.metrics import region_and_class_volumes_ml

    volumes = region_and_class_volumes_ml(_labels, spacing)
    return {row: volumes[row] for row in VOLUME_ROWS}


@st.cache_data(show_spinner=False, max_entries=32)
def _dice_vs_reference(layer_key: str, _labels: np.ndarray, _reference: np.ndarray) -> dict[str, float]:
    from core.segmentation.metrics import region_dice

    return region_dice(_labels, _reference)


def dice_against_reference(state: Studio, layer: Layer) -> None:
    """A one-row table: Dice of a label layer (e.g. the edited mask) against the case's reference."""
    if state.case is None or state.case.seg is None:
        return
    scores = _dice_vs_reference(layer.key, layer.labels, state.case.seg)
    frame = pd.DataFrame([scores], index=["Dice vs reference"])
    st.dataframe(frame.style.format("{:.3f}"))


def metrics_table(metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per-region metrics as a table: rows WT/TC/ET, columns Dice, HD95 (mm), sensitivity, specificity."""
    frame = pd.DataFrame(metrics).T
    frame = frame.rename(columns={"dice": "Dice", "hd95": "HD95 (mm)", "sensitivity": "Sensitivity",
                                  "specificity": "Specificity"})
    frame.index.name = "region"
    return frame


# --------------------------------------------------------------------------- 3D surfaces


@st.cache_data(show_spinner="Building 3D surfaces…", max_entries=16)
def _surfaces(layer_key: str, _labels: np.ndarray, _affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return region_surfaces(_labels, _affine, step=2)


@st.cache_data(show_spinner=False, max_entries=8)
def _brain_surface(image_key: str, _image: np.ndarray, _affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    from core.preprocessing.preprocess import brain_mask

    brain = brain_mask(_image).astype(np.uint8) * ED  # an "edema" brain: its WT surface is the brain outline
    return region_surfaces(brain, _affine, step=4).get("WT")


def surface_figure(case_key: str, case: Case, layer: Layer) -> Any:
    """Plotly figure of the WT/TC/ET surfaces (world mm) inside a faint brain outline."""
    import plotly.graph_objects as go

    fig = go.Figure()
    brain = _brain_surface(case_key, case.image, case.affine)
    if brain is not None:
        verts, faces = brain
        fig.add_trace(_mesh(go, verts, faces, (180, 180, 190), 0.08, "brain"))
    opacity = {"WT": 0.2, "TC": 0.85, "ET": 0.35}  # ET is a rim around the core: see-through, so TC shows
    for region, (verts, faces) in _surfaces(layer.key, layer.labels, case.affine).items():
        fig.add_trace(_mesh(go, verts, faces, REGION_COLOURS[region], opacity[region], region))
    fig.update_layout(
        height=520,
        margin=dict(l=0, r=0, t=0, b=0),
        scene=dict(aspectmode="data", xaxis_title="L ← x (mm) → R", yaxis_title="P ← y (mm) → A",
                   zaxis_title="I ← z (mm) → S",
                   camera=dict(eye=dict(x=-1.2, y=0.9, z=0.55))),
        legend=dict(orientation="h"),
    )
    return fig


def _mesh(go: Any, verts: np.ndarray, faces: np.ndarray, colour: tuple[int, int, int], opacity: float,
          name: str) -> Any:
    return go.Mesh3d(
        x=verts[:, 0], y=verts[:, 1], z=verts[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
        color=f"rgb{tuple(colour)}", opacity=opacity, name=name, showlegend=True, flatshading=False,
        hoverinfo="name",
    )


# --------------------------------------------------------------------------- viewer


@dataclass(frozen=True)
class ViewSource:
    """What a viewer shows: a case's image, its geometry and the label layers that can overlay it."""

    key: str
    case: Case
    geometry: DisplayGeometry
    layers: dict[str, Layer]
    default_layer: str | None = None
    cursor_group: str | None = None  # sources of one group share the cursor (default: ``key``)
    newest: str | None = None  # identity of the newest result; the overlay follows it when it changes


@dataclass(frozen=True)
class ViewSettings:
    """Display settings picked in the viewer's controls."""

    channel: int
    layout: str
    layer: Layer | None
    visible: tuple[int, ...]
    opacity: float
    outline: bool
    window: tuple[float, float]


class _Png:
    """Pre-encoded PNG for ``streamlit_image_coordinates`` (it calls ``save``; no re-encoding)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, buffer: Any, format: str = "PNG", **_: Any) -> None:
        buffer.write(self.data)


def studio_source(state: Studio) -> ViewSource:
    """The current case as a viewer source (label layers: reference, prediction, edited mask)."""
    assert state.case is not None and state.geometry is not None
    layers = state.layers()
    default = next((n for n in (app_state.EDITED, app_state.PREDICTION, app_state.REFERENCE) if n in layers), None)
    return ViewSource(state.key, state.case, state.geometry, layers, default, newest=state.newest_result())


def follow_newest(source: ViewSource, layer_key: str) -> None:
    """Select ``source``'s default overlay in widget ``layer_key`` whenever a newer result appears.

    A new prediction (each Segment run) or a new edit session moves the overlay to it; between
    results the user's own pick stays, so choosing "Reference" after segmenting is kept. A pick
    this source does not have (another case, none yet) also gives way to the default.
    """
    seen_key = f"{layer_key}_newest"
    picked = st.session_state.get(layer_key)
    if st.session_state.get(seen_key) == source.newest and (picked in source.layers or picked == NO_OVERLAY):
        return
    st.session_state[seen_key] = source.newest
    st.session_state[layer_key] = source.default_layer or NO_OVERLAY


def cursor_key(prefix: str) -> str:
    return f"{prefix}_cursor"


def viewer(source: ViewSource, prefix: str, *, compact: bool = False) -> None:
    """Linked axial/coronal/sagittal viewer of ``source`` (widget keys start with ``prefix``).

    Args:
        compact: fewer controls (for previews on the Segment and Generate pages).
    """
    group = source.cursor_group or source.key
    state = app_state.studio()
    shared = source.key == state.key  # the current case: one cursor for every page
    st.session_state[f"{prefix}_shared"] = shared
    if st.session_state.get(f"{prefix}_source") != group:
        st.session_state[f"{prefix}_source"] = group
        labels = source.layers[source.default_layer].labels if source.default_layer else None
        st.session_state[cursor_key(prefix)] = app_state.initial_cursor(source.case, labels)
        layer_key = f"{prefix}_layer"
        if layer_key in st.session_state and st.session_state[layer_key] not in source.layers:
            del st.session_state[layer_key]
    if shared:
        st.session_state[cursor_key(prefix)] = state.cursor_voxel()
    _viewer_fragment(source, prefix, compact)


def _set_cursor(prefix: str, cursor: tuple[int, int, int]) -> None:
    st.session_state[cursor_key(prefix)] = cursor
    if st.session_state.get(f"{prefix}_shared"):
        app_state.studio().cursor = tuple(int(c) for c in cursor)  # type: ignore[assignment]


@st.fragment
def _viewer_fragment(source: ViewSource, prefix: str, compact: bool) -> None:
    settings = _controls(source, prefix, compact)
    if settings.layout == "4 modalities":
        _modalities_grid(source, prefix, settings)
    elif settings.layout == "Side by side":
        _side_by_side(source, prefix, settings)
    else:
        _three_planes(source, prefix, settings)
    _cursor_readout(source, prefix)


def _controls(source: ViewSource, prefix: str, compact: bool) -> ViewSettings:
    names = list(source.layers)
    layer_options = names + [NO_OVERLAY]
    layouts = [layout for layout in LAYOUTS if layout != "Side by side" or len(names) >= 2]
    if compact:
        layouts = ["3 planes"]
    cols = st.columns([1.1, 1.6, 1.4, 1.8, 1.2, 1.1] if not compact else [1.1, 1.4, 1.8, 1.2])
    it = iter(cols)
    with next(it):
        modality = st.selectbox("Modality", MODALITIES, index=MODALITIES.index("flair"),
                                format_func=MODALITY_LABELS.get, key=f"{prefix}_modality")
    layout = "3 planes"
    if not compact:
        with next(it):
            layout = st.radio("Layout", layouts, horizontal=True, key=f"{prefix}_layout") or "3 planes"
    follow_newest(source, f"{prefix}_layer")
    with next(it):
        layer_name = st.selectbox("Overlay", layer_options, key=f"{prefix}_layer")
    with next(it):
        st.caption("Labels")
        toggles = st.columns(3)
        visible = tuple(
            label for label, col in zip(LABEL_TOGGLES, toggles)
            if col.checkbox(LABEL_TOGGLES[label], value=True, key=f"{prefix}_show_{label}")
        )
    with next(it):
        opacity = st.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key=f"{prefix}_opacity")
        outline = st.toggle("Outline", value=False, key=f"{prefix}_outline")
    channel = MODALITIES.index(modality)
    volume = source.case.image[channel]
    if compact:
        window = window_for(source.key, channel, volume)
    else:
        with next(it):
            window = _window_control(source, prefix, channel, volume)
    layer = source.layers.get(layer_name) if layer_name != NO_OVERLAY else None
    return ViewSettings(channel, layout, layer, visible, float(opacity), bool(outline), window)


def _window_control(source: ViewSource, prefix: str, channel: int, volume: np.ndarray) -> tuple[float, float]:
    auto = window_for(source.key, channel, volume)
    with st.popover("Window / level", use_container_width=True):
        mode = st.radio("Window", ("Auto (0.5–99.5 %)", "Manual"), key=f"{prefix}_wmode", horizontal=True)
        if mode == "Manual":
            low, high = intensity_range(source.key, channel, volume)
            step = (high - low) / 200.0
            key = f"{prefix}_wlevel_{source.key}_{channel}"
            width = float(np.clip(auto[1] - auto[0], step, high - low))
            width = st.slider("Window width", step, high - low, width, step, key=f"{key}_w")
            level = st.slider("Level", low, high, float(np.clip((auto[0] + auto[1]) / 2, low, high)), step,
                              key=f"{key}_l")
            return window_from_level(width, level)
        st.caption(f"{auto[0]:.4g} … {auto[1]:.4g}")
    return auto


@st.cache_data(show_spinner=False, max_entries=1024)
def plane_png(
    image_key: str,
    channel: int,
    plane: str,
    index: int,
    window: tuple[float, float],
    layer_key: str | None,
    visible: tuple[int, ...],
    opacity: float,
    outline: bool,
    cursor: tuple[int, int, int] | None,
    size: tuple[int, int],
    _volume: np.ndarray,
    _labels: np.ndarray | None,
    _geometry: DisplayGeometry,
) -> bytes:
    """PNG of one viewer image, cached on everything that changes its pixels (arrays by their keys)."""
    rgb = render_plane(_volume, plane, index, _geometry, window, _labels, visible=visible, opacity=opacity,
                       outline=outline, cursor=cursor, size=size)
    return png_bytes(rgb)


def plane_size(source: ViewSource, plane: str, pixels: int = VIEW_PIXELS) -> tuple[int, int]:
    """On-screen ``(width, height)`` of a plane: physically proportioned, longest side ``pixels``."""
    case = source.case
    unit = display_size(plane, case.shape, case.spacing, source.geometry, 1.0)
    return display_size(plane, case.shape, case.spacing, source.geometry, pixels / max(unit))


def _image(source: ViewSource, prefix: str, settings: ViewSettings, plane: str, widget: str = "") -> None:
    """One clickable viewer image of ``plane`` at the cursor, drawn with ``settings``."""
    cursor = tuple(st.session_state[cursor_key(prefix)])
    channel, layer = settings.channel, settings.layer
    geometry, case = source.geometry, source.case
    index = geometry.slice_index(plane, cursor)
    png = plane_png(
        source.key, channel, plane, index, settings.window, layer.key if layer else None, settings.visible,
        settings.opacity, settings.outline, cursor, plane_size(source, plane),
        case.image[channel], layer.labels if layer else None, geometry,
    )
    key = f"{prefix}_click_{widget}{plane}_{channel}"
    if streamlit_image_coordinates is None:
        st.image(png, output_format="PNG", width="stretch")
        return
    slice_shape = display_view(case.image[channel], plane, index, geometry).shape
    streamlit_image_coordinates(
        _Png(png), key=key, width="stretch", cursor="crosshair",
        on_click=functools.partial(_on_click, prefix, key, plane, index, slice_shape, case.shape, geometry),
    )


def _on_click(prefix: str, key: str, plane: str, index: int, slice_shape: tuple[int, int],
              shape: tuple[int, int, int], geometry: DisplayGeometry) -> None:
    value = st.session_state.get(key)
    if not value or "x" not in value:
        return
    row, col = screen_to_slice(value["x"], value["y"], value["width"], value["height"], slice_shape)
    _set_cursor(prefix, geometry.display_to_voxel(plane, index, row, col, shape))


def _slice_slider(source: ViewSource, prefix: str, plane: str, label: str | None = None) -> None:
    """Slider of a plane's slice, linked to the shared cursor."""
    geometry = source.geometry
    axis = geometry.axes(plane)[0]
    key = f"{prefix}_slice_{plane}"
    st.session_state[key] = int(st.session_state[cursor_key(prefix)][axis])
    st.slider(label or f"{plane.capitalize()} slice", 0, geometry.slice_count(plane, source.case.shape) - 1,
              key=key, on_change=_on_slider, args=(prefix, key, axis))


def _on_slider(prefix: str, key: str, axis: int) -> None:
    cursor = list(st.session_state[cursor_key(prefix)])
    cursor[axis] = int(st.session_state[key])
    _set_cursor(prefix, tuple(cursor))


def _three_planes(source: ViewSource, prefix: str, settings: ViewSettings) -> None:
    for plane, col in zip(PLANES, st.columns(3)):
        with col:
            _slice_slider(source, prefix, plane)
            _image(source, prefix, settings, plane)


def _modalities_grid(source: ViewSource, prefix: str, settings: ViewSettings) -> None:
    grid, side = st.columns([2.2, 1])
    with side:
        plane = st.radio("Plane", PLANES, horizontal=True, key=f"{prefix}_grid_plane", format_func=str.capitalize)
        _slice_slider(source, prefix, plane)
        st.caption("The selected modality follows Window / level, the others their automatic window. "
                   "Click any image to move the shared cursor.")
    with grid:
        for row in (MODALITIES[:2], MODALITIES[2:]):
            for modality, col in zip(row, st.columns(2)):
                channel = MODALITIES.index(modality)
                window = settings.window if channel == settings.channel else \
                    window_for(source.key, channel, source.case.image[channel])
                with col:
                    st.caption(MODALITY_LABELS[modality])
                    _image(source, prefix, replace(settings, channel=channel, window=window), plane, widget="grid")


def _side_by_side(source: ViewSource, prefix: str, settings: ViewSettings) -> None:
    names = list(source.layers)
    *images, side = st.columns([1, 1, 0.8])
    with side:
        left = st.selectbox("Left", names, index=0, key=f"{prefix}_left")
        right = st.selectbox("Right", names, index=min(1, len(names) - 1), key=f"{prefix}_right")
        plane = st.radio("Plane", PLANES, horizontal=True, key=f"{prefix}_sbs_plane", format_func=str.capitalize)
        _slice_slider(source, prefix, plane)
    for side_name, name, col in zip(("left", "right"), (left, right), images):
        with col:
            st.caption(name)
            _image(source, prefix, replace(settings, layer=source.layers[name]), plane, widget=side_name)


def _cursor_readout(source: ViewSource, prefix: str) -> None:
    cursor = tuple(st.session_state[cursor_key(prefix)])
    case = source.case
    world = case.affine[:3, :3] @ np.asarray(cursor, float) + case.affine[:3, 3]
    values = " · ".join(f"{MODALITY_LABELS[m]} {case.image[i][cursor]:.4g}" for i, m in enumerate(MODALITIES))
    labels = " · ".join(f"{name}: {CLASS_NAMES[int(layer.labels[cursor])]}" for name, layer in source.layers.items())
    st.caption(
        f"Cursor voxel ({', '.join(map(str, cursor))}) · world ({', '.join(f'{w:.1f}' for w in world)}) mm · "
        f"{values}" + (f" · {labels}" if labels else "")
    )


# --------------------------------------------------------------------------- NiiVue (WebGL) viewer

NV_KEYS = ("nv_layer",)  # shared by all pages (modality, labels shown and opacity live in the browser)


def keep_shared_settings() -> None:
    """Keep the viewer settings alive across pages (Streamlit drops a widget's state on pages without it)."""
    for key in NV_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def use_niivue() -> bool:
    """Whether this session gets the NiiVue viewer (else the PNG viewer); the user can opt out."""
    from app.viewer import component

    return component.available()


def _on_niivue(key: str) -> None:
    from app.viewer import component

    value = st.session_state.get(key)
    component.note_webgl(value)
    app_state.note_cursor(value)


@st.fragment
def niivue_view(state: Studio, key: str, *, compact: bool = False, height: int = 620,
                uncertainty: bool = False) -> None:
    """The NiiVue viewer of the current case; the overlay choice (a Python widget) is shared by all pages.

    Window/level (right-drag), slices (wheel), zoom, layout, modality, label visibility and opacity
    are set in the viewer itself: the browser's job, no Python rerun (kept per browser, for every page).
    ``uncertainty``: offer the prediction's uncertainty layer (a toggle in the viewer bar) when it has one.
    """
    from app.viewer import component

    source = studio_source(state)
    names = list(source.layers)
    options = names + [NO_OVERLAY]
    follow_newest(source, "nv_layer")
    layer_name = st.columns([1.6, 3.6])[0].selectbox("Overlay", options, key="nv_layer")
    layer = source.layers.get(layer_name)
    prediction = state.prediction if uncertainty else None
    component.viewer(
        key=key, case_key=state.key, image=state.case.image, affine=state.case.affine,
        names=[MODALITY_LABELS[m] for m in MODALITIES], active=MODALITIES.index("flair"),
        labels=layer.labels if layer else None, labels_key=layer.key if layer else "", labels_token=layer.key if layer
        else "", cursor=state.cursor_voxel(), height=height,
        uncertainty=prediction.probability_codes if prediction is not None else None,
        uncertainty_key=prediction.key if prediction is not None else "",
        on_change=functools.partial(_on_niivue, key),
    )


def _on_sample_niivue(key: str) -> None:
    from app.viewer import component

    component.note_webgl(st.session_state.get(key))  # the sample's cursor is its own, not the case's


@st.cache_data(show_spinner=False, max_entries=16)
def _sample_cursor(mask_key: str, _sample: Case) -> tuple[int, int, int]:
    """A sample's first crosshair: its mask's centre (computed once per sample, not on every rerun)."""
    return app_state.initial_cursor(_sample, _sample.seg)


@st.fragment
def niivue_sample_view(state: Studio, samples: Samples, index: int, key: str = "nv_gen", height: int = 560) -> None:
    """One generated sample in the NiiVue viewer, with the mask it was generated from as its label layer.

    A sample rendered into the case also offers the case's own four volumes in the viewer bar (*Host*): the same
    grid, so a click flips between the original and the generated scan at the same place, in the browser.
    """
    from app.viewer import component

    sample = samples.cases[index]
    names = [MODALITY_LABELS[m] for m in MODALITIES]
    into_case = samples.mode == app_state.INTO_CASE and state.case is not None
    compare = (component.CompareVolumes(state.key, state.case.image, names, "Host")
               if into_case and state.case.shape == sample.shape else None)
    mask_key = f"{samples.key}:{index}:mask"
    component.viewer(
        key=key, case_key=f"{samples.key}:{index}", image=sample.image, affine=sample.affine, names=names,
        active=MODALITIES.index("flair"), group="Sample", compare=compare, labels=sample.seg, labels_key=mask_key,
        labels_token=mask_key, cursor=_sample_cursor(mask_key, sample), height=height,
        on_change=functools.partial(_on_sample_niivue, key),
    )
