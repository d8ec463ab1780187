"""Load a case: the built-in demo, uploaded files or a .zip, or a folder on the server."""

import streamlit as st

from app import access, actions, persistence
from app import state as app_state
from app.widgets import progress_reporter, recent_cases, session_data, show_flash
from core.preprocessing.input_check import ERROR

st.title("Load a case")
st.caption(
    "A case is four co-registered MRI modalities (T1, T1ce, T2, FLAIR) and optionally a segmentation, "
    "named like BraTS 2020/2021 (`<case>_t1.nii.gz`, …, `_seg`) or BraTS 2023 (`<case>-t1n.nii.gz`, …, `-seg`)."
)
show_flash()


def _finish(error: str | None, bar) -> None:
    """Show a loader error (the current case stays), or rerun so every page sees the new case."""
    bar.empty()
    if error:
        st.error(error)
        return
    case = app_state.studio().case
    app_state.flash("success", f"Loaded **{case.name}**: {' × '.join(map(str, case.shape))} voxels. "
                               "Open the Viewer to look at it.")
    for message in case.warnings:  # loaded, but unusual: say so
        app_state.flash("warning", message)
    for finding in actions.case_findings():
        refused = finding.level == ERROR
        app_state.flash("warning", f"{finding.message} Segment refuses this case unless you tick "
                                   f"*{actions.SEGMENT_ANYWAY}*." if refused else finding.message)
    st.rerun()


# A keyed tab bar remembers the open tab across reruns (it jumped back to "Demo case" after a load).
demo, upload, folder = st.tabs(["Demo case", "Upload", "Folder on the server"], key="load_tab", on_change="rerun")
with demo:
    st.markdown(
        "A synthetic glioma case on the BraTS grid (240 × 240 × 155, 1 mm) with a reference segmentation, "
        "generated deterministically on first use. Nothing is downloaded."
    )
    if st.button("Load the demo case", type="primary", key="load_demo"):
        with st.spinner("Generating the demo case (first time only)…"):
            _finish(actions.load_demo(), st.empty())

with upload:
    files = st.file_uploader(
        "Four modality files (+ optional segmentation) or one .zip of a case folder",
        type=["nii", "gz", "zip"], accept_multiple_files=True, key="upload_files",
    )
    if st.button("Load the uploaded case", type="primary", key="load_upload", disabled=not files):
        bar = st.progress(0.0, text="Reading the uploaded files…")
        payload = {f.name: f.getvalue() for f in files}
        _finish(actions.load_uploads(payload, progress_reporter(bar)), bar)

with folder:
    hint = access.folder_roots_hint()
    if hint:
        st.caption(hint)
    path = st.text_input("Case folder on the server", key="load_path",
                         placeholder="/data/BraTS2021/BraTS2021_00000",
                         on_change=lambda: st.session_state.__setitem__("load_path_entered", True))
    entered = st.session_state.pop("load_path_entered", False) and bool(path.strip())  # Enter opens it too
    if st.button("Open the folder", type="primary", key="load_folder") or entered:
        bar = st.progress(0.0, text="Reading the case folder…")
        _finish(actions.load_folder(path, progress_reporter(bar)), bar)

state = app_state.studio()
if state.case is not None:
    st.divider()
    st.markdown(f"Current case: **{state.case.name}**")
    st.page_link("pages/viewer.py", label="Open the Viewer", icon=":material/view_in_ar:")
recent_cases(persistence.recent_cases())
session_data()
