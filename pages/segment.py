"""Segment: run the 3D U-Net on the current case; Dice/HD95 against a reference; download."""

import functools

import streamlit as st

from app import actions, models
from app import state as app_state
from app.widgets import (
    convention_label,
    default_convention,
    follow_job,
    metrics_table,
    niivue_view,
    require_case,
    show_flash,
    studio_source,
    use_niivue,
    viewer,
)
from core.io.labels import CONVENTIONS

st.title("Segment")
show_flash()
state = require_case()
if state is not None:
    models.prefetch_model_code()
    info = models.weights_info("unet")
    if not info.exists:
        st.warning(info.missing_message + " Or upload a `.keras` U-Net below.")
    choices = ["Shipped weights", "Upload a .keras file"]
    source = st.radio("Model", choices, horizontal=True, key="seg_model_source", index=0 if info.exists else 1)
    model_name, upload = str(info.path.name), None
    if source == choices[0]:
        st.caption(f"`{info.label}`")
    else:
        upload = st.file_uploader("U-Net weights (.keras, loaded in safe mode)", type=["keras"], key="seg_upload")
        model_name = upload.name if upload else ""
    cols = st.columns([2, 1, 2])
    tta = cols[0].toggle("Test-time augmentation", value=False, key="seg_tta",
                         help="Average the predictions of the 8 mirror flips of the volume (about 8x slower).")
    ready = (source == choices[0] and info.exists) or upload is not None
    refusals = actions.plausibility_errors()  # what `python -m core.segment` refuses unless --force
    if refusals:
        for message in refusals:
            st.warning(message, icon=":material/block:")
        forced = st.checkbox(actions.SEGMENT_ANYWAY, value=False, key="seg_force",
                             help="The checks above say this case is not what the U-Net was trained on (whole, "
                                  "skull-stripped 1 mm brains); its labels would be unreliable. Tick to segment "
                                  "it anyway, as `python -m core.segment --force` does.")
        ready = ready and forced
    else:
        forced = False
    running = app_state.job("segment")
    running = running if running is not None and running.running else None
    if cols[1].button("Segment", type="primary", disabled=not ready or running is not None, key="seg_run"):
        if upload is not None:
            data, file_name = upload.getvalue(), upload.name
            load = functools.partial(models.uploaded_unet_bytes, data, file_name)
        else:
            load = functools.partial(models.shipped_model, "unet")
        running = actions.start_segmentation(load, model_name, tta=tta, force=forced)
    if running is not None:
        follow_job(running)

    prediction = state.prediction
    if prediction is not None:
        st.divider()
        st.subheader("Prediction")
        st.caption(f"{prediction.model_name} · {prediction.seconds:.1f} s{' · TTA' if prediction.tta else ''}")
        if prediction.metrics:
            st.markdown("**Against the reference segmentation**")
            st.dataframe(metrics_table(prediction.metrics).style.format("{:.3f}"))
        elif state.case.seg is None:
            st.caption("No reference segmentation in this case: no Dice / HD95.")
        if use_niivue():
            niivue_view(state, "seg_nv", compact=True, height=480, uncertainty=True)
        else:
            viewer(studio_source(state), "seg", compact=True)
        cols = st.columns([1, 2])
        convention = cols[0].selectbox("Label values", CONVENTIONS, key="seg_convention",
                                   index=CONVENTIONS.index(default_convention(state)),
                                       format_func=convention_label)
        case, labels = state.case, prediction.labels
        cols[1].download_button(
            "Download the prediction (.nii.gz)",
            data=lambda: actions.label_download(labels, case, convention),
            file_name=f"{case.name}_pred_{convention}.nii.gz", mime="application/gzip",
            on_click="ignore", key="seg_download", icon=":material/download:",
        )
        if prediction.probability_codes is not None:
            codes = prediction.probability_codes
            st.download_button(
                "Download the WT/TC/ET probabilities (.nii.gz)",
                data=lambda: actions.probability_download(codes, case),
                file_name=f"{case.name}_probabilities.nii.gz", mime="application/gzip", on_click="ignore",
                key="seg_download_probabilities", icon=":material/download:",
                help="Three frames (WT, TC, ET), 0..1, on the case's grid with its affine: where the model is unsure.",
            )
        st.page_link("pages/viewer.py", label="Open in the Viewer", icon=":material/view_in_ar:")
