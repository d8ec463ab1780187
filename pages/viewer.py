"""Viewer: linked axial / coronal / sagittal slices, overlays, 3D surfaces and region volumes."""

import streamlit as st

from app.widgets import (
    niivue_view,
    require_case,
    show_flash,
    studio_source,
    surface_figure,
    use_niivue,
    viewer,
    volumes_table,
)

st.title("Viewer")
show_flash()
state = require_case()
if state is not None:
    source = studio_source(state)
    if use_niivue():
        niivue_view(state, "view_nv")
        st.toggle("Classic viewer (PNG images, no WebGL)", key="viewer_classic",
                  help="The server-rendered viewer: works in any browser, slower to scroll.")
    else:
        st.caption("Click an image to move the cursor; the three planes stay linked.")
        viewer(source, "view")
        if st.session_state.get("viewer_classic"):
            st.toggle("Classic viewer (PNG images, no WebGL)", key="viewer_classic")
    surfaces, volumes = st.tabs(["3D surfaces", "Volumes"])
    with surfaces:
        if source.layers:
            names = list(source.layers)
            name = st.selectbox("Label map", names, index=names.index(source.default_layer), key="view_3d_layer")
            # Off by default beside NiiVue (its 3D view shows the labels already): the meshes and
            # plotly's WebGL took the browser's time while the viewer was loading.
            if st.toggle("Show the 3D surfaces (WT green, TC red, ET yellow)", value=not use_niivue(),
                         key="view_3d_on"):
                st.plotly_chart(surface_figure(source.key, source.case, source.layers[name]), width="stretch")
        else:
            st.info("No label map yet: segment the case or load one with a segmentation.")
    with volumes:
        if source.layers:
            st.dataframe(volumes_table(source.layers, state.case.spacing).style.format("{:.2f}"))
            st.caption("Volumes in mL. WT = NCR + ED + ET, TC = NCR + ET.")
        else:
            st.info("No label map yet.")
