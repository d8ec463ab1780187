"""Segment: run the 3D U-Net on the current case; Dice/HD95 against a reference; download."""

import streamlit as st

import app_state
from core.labels import CONVENTIONS
from pages._common import (
    convention_label,
    metrics_table,
    progress_reporter,
    require_case,
    show_flash,
    studio_source,
    viewer,
)

st.title("Segment")
show_flash()
state = require_case()
if state is not None:
    app_state.prefetch_model_code()
    info = app_state.weights_info("unet")
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
    if cols[1].button("Segment", type="primary", disabled=not ready, key="seg_run"):
        bar = st.progress(0.0, text="Loading the model…")
        try:
            if upload is not None:
                model = app_state.uploaded_unet(upload.getvalue(), upload.name)
            else:
                model = app_state.shipped_model("unet")
            prediction = app_state.segment_current(model, model_name, tta=tta, progress=progress_reporter(bar))
        except Exception as exc:  # a bad model file must not end the session
            bar.empty()
            st.error(f"Segmentation failed: {exc}")
        else:
            app_state.flash("success", f"Segmented with {model_name} in {prediction.seconds:.1f} s"
                                       f"{' (TTA)' if prediction.tta else ''}. The prediction is now the "
                                       "Viewer's overlay.")
            st.rerun()

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
        viewer(studio_source(state), "seg", compact=True)
        cols = st.columns([1, 2])
        convention = cols[0].selectbox("Label values", CONVENTIONS, index=1, key="seg_convention",
                                       format_func=convention_label)
        case, labels = state.case, prediction.labels
        cols[1].download_button(
            "Download the prediction (.nii.gz)",
            data=lambda: app_state.label_download(labels, case, convention),
            file_name=f"{case.name}_pred_{convention}.nii.gz", mime="application/gzip",
            on_click="ignore", key="seg_download", icon=":material/download:",
        )
        st.page_link("pages/viewer.py", label="Open in the Viewer", icon=":material/view_in_ar:")
