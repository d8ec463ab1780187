"""Edit mask: paint labels on a slice, fix it up (fill holes, islands, copy), undo/redo, download."""

import functools

import streamlit as st
from streamlit_drawable_canvas import CanvasResult, st_canvas

from app import actions, persistence, widgets
from app import state as app_state
from app.viewer import component as niivue
from app.widgets import (
    MODALITY_LABELS,
    canvas_without_toolbar,
    convention_label,
    default_convention,
    dice_against_reference,
    label_chip,
    plane_png,
    plane_size,
    require_case,
    show_flash,
    studio_source,
    volumes_table,
)
from core.io.case import MODALITIES
from core.io.labels import CLASS_COLOURS, CLASS_NAMES, CONVENTIONS, ED
from core.viewer.render import PLANES

CANVAS_PIXELS = 600
BRUSH_LABELS = {label: label_chip(label) for label in (1, 2, 3, 0)}
ERASE_COLOUR = "#ffffff"

st.title("Edit mask")
show_flash()
state = require_case()


def _hex(label: int) -> str:
    return ERASE_COLOUR if label == 0 else "#{:02x}{:02x}{:02x}".format(*CLASS_COLOURS[label])


def _target() -> tuple[str, int]:
    """Plane and slice the slice tools act on: the canvas's, or the 3D viewer's cursor in the chosen plane."""
    if "edit_nv_plane" in st.session_state and niivue.available():
        current = app_state.studio()
        plane = st.session_state["edit_nv_plane"]
        return plane, int(current.cursor_voxel()[current.geometry.axes(plane)[0]])
    return st.session_state["edit_plane"], st.session_state["edit_slice"]


def _undo_redo_buttons(editor) -> None:
    """The Undo / Redo button row (both viewers share the editor's one history)."""
    row = st.columns(2)
    row[0].button("Undo", on_click=_run, args=("undo",), disabled=not editor.can_undo,
                  icon=":material/undo:", key="edit_undo", use_container_width=True)
    row[1].button("Redo", on_click=_run, args=("redo",), disabled=not editor.can_redo,
                  icon=":material/redo:", key="edit_redo", use_container_width=True)


def _run(action: str, *args) -> None:
    """Button callback: one editor operation on the current slice (runs before the page redraws)."""
    with persistence.shared_edits() as live:  # on the newest saved mask (another tab may have drawn)
        _edit(live.editor, action, *args)


def _edit(editor, action: str, *args) -> None:
    plane, index = _target()
    if action == "undo":
        editor.undo()
    elif action == "redo":
        editor.redo()
    elif action == "fill":
        fill = st.session_state.get("edit_fill_label") if "edit_nv_plane" in st.session_state else None
        editor.fill_holes(plane, index, fill or st.session_state.get("edit_label") or ED)
    elif action == "islands":
        editor.remove_islands(plane, index, st.session_state["edit_min_island"])
    elif action == "clear":
        editor.clear_slice(plane, index)
    elif action == "copy":
        target = index + args[0]
        if 0 <= target < editor.geometry.slice_count(plane, editor.labels.shape):
            editor.copy_slice(plane, index, target)
            if "edit_slice" in st.session_state:
                st.session_state["edit_slice"] = target


def _apply_stroke(key: str, plane: str, index: int) -> None:
    """Canvas callback (mouse released): paint the stroke into the mask, then show a fresh canvas.

    Runs before the page redraws, so one script run shows the painted slice (a new canvas key
    drops the drawn stroke from the canvas: it is part of the background image now). The label is
    the one chosen now (a callback bound in an earlier run painted the previous label).
    """
    label = int(st.session_state.get("edit_label", 1))
    drawing = (st.session_state.get(key) or {}).get("drawing") or {}
    if not drawing.get("data"):
        return
    stroke = CanvasResult(drawing.get("raw"), drawing["data"], return_image_data=True).image_data
    if stroke is not None and stroke[..., 3].any():
        with persistence.shared_edits() as live:
            live.editor.apply_stroke(plane, index, stroke, label)
        st.session_state["edit_strokes"] = st.session_state.get("edit_strokes", 0) + 1


def _start(source: str) -> None:
    actions.start_editing(source)
    current = app_state.studio()
    st.session_state["edit_cursor"] = app_state.initial_cursor(current.case, current.editor.labels)
    st.session_state.pop("edit_slice_plane", None)


@st.fragment
def _editing_panel() -> None:
    editor = state.editor
    source = studio_source(state)
    tools = st.columns([2.2, 3, 1.6])
    plane = tools[0].radio("Plane", PLANES, horizontal=True, key="edit_plane", format_func=str.capitalize)
    label = tools[1].radio("Brush label", list(BRUSH_LABELS), horizontal=True, key="edit_label",
                           format_func=BRUSH_LABELS.get)
    brush = tools[2].slider("Brush diameter (voxels)", 1, 25, 5, key="edit_brush")
    # The slice follows a 3D cursor, so switching planes shows the slices through the same point.
    axis = editor.geometry.axes(plane)[0]
    count = editor.geometry.slice_count(plane, editor.labels.shape)
    if "edit_cursor" not in st.session_state:  # an editor restored after a reload: start at the shared cursor
        st.session_state["edit_cursor"] = state.cursor_voxel()
    cursor = list(st.session_state["edit_cursor"])
    if st.session_state.get("edit_slice_plane") != plane or "edit_slice" not in st.session_state:
        st.session_state["edit_slice"] = min(int(cursor[axis]), count - 1)
        st.session_state["edit_slice_plane"] = plane
    index = st.slider(f"{plane.capitalize()} slice", 0, count - 1, key="edit_slice")
    cursor[axis] = index
    st.session_state["edit_cursor"] = tuple(cursor)

    canvas_col, side = st.columns([3, 1.3])
    width, height = plane_size(source, plane, CANVAS_PIXELS)
    layer = source.layers[app_state.EDITED]
    channel = st.session_state.get("edit_modality", 3)
    volume = state.case.image[channel]
    png = plane_png(source.key, channel, plane, index, widgets.window_for(source.key, channel, volume),
                    layer.key, (1, 2, 3), float(st.session_state.get("edit_opacity", 0.45)), False, None,
                    (width, height), volume, layer.labels, editor.geometry)
    strokes = st.session_state.setdefault("edit_strokes", 0)
    key = f"edit_canvas_{state.editor_key}_{plane}_{index}_{editor.version}_{strokes}"
    with canvas_col:
        canvas_without_toolbar()
        st_canvas(
            background_image=png, width=width, height=height, drawing_mode="freedraw",
            stroke_width=max(1, round(brush * width / editor.slice(plane, index).shape[1])),
            stroke_color=_hex(label), return_image_data=True, update_streamlit=True, key=key,
            on_change=functools.partial(_apply_stroke, key, plane, index),
        )
        st.caption("Draw on the slice: each stroke is applied when you release the mouse (the Undo button "
                   "takes it back). The eraser is the Erase label.")

    with side:
        _undo_redo_buttons(editor)
        row = st.columns(2)
        row[0].button("◀ Copy to previous", on_click=_run, args=("copy", -1), key="edit_copy_prev",
                      use_container_width=True)
        row[1].button("Copy to next ▶", on_click=_run, args=("copy", 1), key="edit_copy_next",
                      use_container_width=True)
        st.button("Fill holes", on_click=_run, args=("fill",), key="edit_fill", use_container_width=True,
                  help="Fill background enclosed by the tumour on this slice with the brush label (ED when erasing).")
        row = st.columns([1, 1.4])
        row[0].number_input("Min voxels", 1, 10000, 20, key="edit_min_island", label_visibility="collapsed")
        row[1].button("Remove islands", on_click=_run, args=("islands",), key="edit_islands",
                      use_container_width=True, help="Erase pieces smaller than the number of voxels on this slice.")
        st.button("Clear slice", on_click=_run, args=("clear",), key="edit_clear", use_container_width=True)
        st.selectbox("Background", range(4), index=3, key="edit_modality",
                     format_func=lambda c: MODALITY_LABELS[MODALITIES[c]])
        st.slider("Label opacity", 0.0, 1.0, 0.45, 0.05, key="edit_opacity")
        st.caption(f"{editor.undo_depth} / {editor.history_limit} undo steps")
        st.dataframe(volumes_table({app_state.EDITED: layer}, state.case.spacing).style.format("{:.2f}"))
        dice_against_reference(state, layer)


def _on_viewer() -> None:
    """Component callback (runs before the fragment redraws): apply new edits, keep the cursor."""
    value = st.session_state.get("edit_nv")
    niivue.note_webgl(value)
    actions.apply_viewer_edits(value)
    app_state.note_cursor(value)


@st.fragment(run_every=2.0)
def _niivue_panel() -> None:
    """The 3D editor: NiiVue with pen / eraser / fill, keys, and the slice tools beside it.

    Reruns every 2 s to take edits another tab of this session saved (a small JSON read when there
    are none; the component keeps its browser state and the tables are cached by content).
    """
    persistence.sync_edits(state)
    editor = state.editor
    view, side = st.columns([2.8, 1.1])
    with view:
        niivue.viewer(
            key="edit_nv", case_key=state.key, image=state.case.image, affine=state.case.affine,
            names=[MODALITY_LABELS[m] for m in MODALITIES], active=int(st.session_state.get("edit_modality", 3)),
            labels=editor.labels, labels_key=state.edit_layer_key(),
            labels_token=actions.editor_labels_token(), editable=True, epoch=state.editor_key,
            acked_revs=state.editor_revs, history_limit=editor.history_limit,
            cursor=state.cursor_voxel(), height=600, on_change=_on_viewer,
        )
        st.caption("Left-drag paints on any plane · keys: `1` `2` `3` label, `e` eraser, `p` pen, `f` fill (draw an "
                   "outline), `[` `]` brush size, Ctrl+Z / Ctrl+Y undo / redo, wheel or Page Up/Down slice. "
                   "Every stroke is saved on the server as soon as you release the mouse.")
    with side:
        _undo_redo_buttons(editor)
        st.caption(f"{editor.undo_depth} / {editor.history_limit} undo steps · {state.editor_strokes} strokes received"
                   f" · {state.editor_events - state.editor_strokes} undo/redo")
        st.radio("Slice tools act on", PLANES, horizontal=True, key="edit_nv_plane", format_func=str.capitalize)
        plane, index = _target()
        st.caption(f"{plane.capitalize()} slice {index} (through the cursor)")
        row = st.columns(2)
        row[0].button("◀ Copy", on_click=_run, args=("copy", -1), key="edit_copy_prev", use_container_width=True,
                      help="Copy this slice onto the previous one.")
        row[1].button("Copy ▶", on_click=_run, args=("copy", 1), key="edit_copy_next", use_container_width=True,
                      help="Copy this slice onto the next one.")
        st.selectbox("Fill label", (1, 2, 3), index=1, key="edit_fill_label", format_func=CLASS_NAMES.get)
        st.button("Fill holes", on_click=_run, args=("fill",), key="edit_fill", use_container_width=True,
                  help="Fill background enclosed by the tumour on this slice with the fill label.")
        st.number_input("Smallest piece kept (voxels)", 1, 10000, 20, key="edit_min_island")
        st.button("Remove islands", on_click=_run, args=("islands",), key="edit_islands",
                  use_container_width=True, help="Erase pieces smaller than that on this slice.")
        st.button("Clear slice", on_click=_run, args=("clear",), key="edit_clear", use_container_width=True)
        layer = app_state.Layer(app_state.EDITED, state.edit_layer_key(), editor.labels)
        st.dataframe(volumes_table({app_state.EDITED: layer}, state.case.spacing).style.format("{:.2f}"))
        dice_against_reference(state, layer)


def _download() -> None:
    """Download of the edited mask, outside the editing fragment so strokes never re-create the button.

    The data callable reads the mask when clicked, so it holds every stroke drawn so far.
    """
    live = app_state.studio()
    cols = st.columns([1.2, 1.2, 2])
    convention = cols[0].selectbox("Label values", CONVENTIONS, key="edit_convention",
                                   index=CONVENTIONS.index(default_convention(live)),
                                   format_func=convention_label)
    cols[1].download_button(
        "Download the edited mask (.nii.gz)",
        data=lambda: actions.label_download(live.editor.labels, live.case, convention),
        file_name=f"{live.case.name}_edited_{convention}.nii.gz", mime="application/gzip",
        on_click="ignore", key="edit_download", icon=":material/download:",
    )


if state is not None:
    layers = state.layers()
    starts = [n for n in (app_state.PREDICTION, app_state.REFERENCE) if n in layers] + ["Empty"]
    with st.expander("Start from…", expanded=state.editor is None):
        cols = st.columns([2, 1])
        start = cols[0].selectbox("Start from", starts, key="edit_start", label_visibility="collapsed")
        label = "Start editing" if state.editor is None else "Restart (drops the current edits)"
        cols[1].button(label, on_click=_start, args=(start,), type="primary", key="edit_start_button")
    if state.editor is None:
        st.info("Choose the mask to start from: the U-Net prediction, the reference segmentation or an empty mask.")
    else:
        st.caption(f"Editing a copy of: **{state.editor_source}**. The Viewer and Generate pages use the edited mask.")
        if niivue.available():
            _niivue_panel()
        else:
            _editing_panel()
        _download()
