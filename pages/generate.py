"""Generate: render the current mask into this case (insertion VAE-GAN) or a new CVAE brain; fidelity; download."""

import functools
import time

import streamlit as st

from app import actions, models, persistence
from app import state as app_state
from app.state import Layer
from app.widgets import (
    ViewSource,
    default_convention,
    follow_job,
    metrics_table,
    niivue_sample_view,
    progress_reporter,
    require_case,
    show_flash,
    use_niivue,
    viewer,
)


def _set_label(meta: dict) -> str:
    """One line per saved sample set: mode, mask, seed, count, time."""
    saved = time.strftime("%H:%M:%S", time.localtime(meta["saved"]))
    return (f"{str(meta.get('mode', '')).capitalize()} · {str(meta.get('source', '')).lower()} · seed "
            f"{meta.get('seed')} · {len(meta.get('names') or [])} sample(s) · {saved}")


def _show_picked_set() -> None:
    persistence.show_sample_set(st.session_state["gen_set"])


st.title("Generate synthetic MRI")
st.caption("**Into this case**: the tumour of a label map is painted into the loaded brain (its own tumour is "
           "replaced, every voxel away from both stays as it is). **New brain**: the conditional VAE draws whole "
           "new T1 / T1ce / T2 / FLAIR volumes around the label map.")
show_flash()
state = require_case()
if state is not None:
    models.prefetch_model_code()
    mode = st.radio("Generate", (app_state.INTO_CASE, app_state.NEW_BRAIN), horizontal=True, key="gen_mode",
                    format_func=str.capitalize)
    into_case = mode == app_state.INTO_CASE
    info = models.weights_info("insertion" if into_case else "cvae")
    if not info.exists:
        st.warning(info.missing_message + " Generation is disabled until then.")
    layers = state.layers()
    masks = [n for n in (app_state.EDITED, app_state.PREDICTION, app_state.REFERENCE) if n in layers]
    if not masks:
        st.info("Generation needs a tumour mask: segment the case, load one with a segmentation, or draw one "
                "on the Edit mask page.")
    cols = st.columns([1.6, 1, 1, 1.4, 1])
    source = cols[0].selectbox("Mask", masks, key="gen_mask", disabled=not masks)
    n_samples = cols[1].number_input("Samples", 1, 4, 2, key="gen_n",
                                     help="Each sample is a full 4-modality volume (~140 MB in memory).")
    seed = cols[2].number_input("Seed", 0, 2**31 - 1, 0, key="gen_seed")
    temperature = cols[3].slider("Temperature", 0.0, 1.5, 1.0, 0.05, key="gen_temperature",
                                 help="Scale of the latent noise: 0 gives the mean image, higher more variety. "
                                      "Into a case it also scales the scanner noise matched to the host "
                                      "(0: a smooth, noise-free fill).")
    label = "Render into this case" if into_case else "Generate"
    running = app_state.job("generate")
    running = running if running is not None and running.running else None
    if cols[4].button(label, type="primary", disabled=not (info.exists and masks) or running is not None,
                      key="gen_run"):
        # a background run with progress and Cancel; a bad weights file fails the run, not the session
        load = functools.partial(models.shipped_model, "insertion" if into_case else "cvae")
        running = actions.start_generation(mode, load, source, n_samples=int(n_samples), seed=int(seed),
                                           temperature=float(temperature))
    if running is not None:
        follow_job(running)

    samples = state.samples
    history = persistence.sample_history()
    if samples is not None:
        st.divider()
        st.subheader("Samples")
        cols = st.columns([3, 1])
        if len(history) > 1:  # earlier runs stay in the session (on the server) until removed
            ids = [h["set_id"] for h in history]
            if st.session_state.get("gen_set_shown") != samples.key:  # a new run, a removal: follow it
                st.session_state["gen_set_shown"] = samples.key
                st.session_state["gen_set"] = samples.key if samples.key in ids else ids[0]
            cols[0].selectbox(f"Sample set ({len(ids)} in this session, newest first)", ids, key="gen_set",
                              format_func=dict(zip(ids, map(_set_label, history))).get, on_change=_show_picked_set)
        if cols[1].button("Remove this set", key="gen_remove", icon=":material/delete:",
                          help="Delete these samples from the session (their files on the server too)."):
            persistence.delete_sample_set(samples.key)
            st.rerun()
        st.caption(f"{samples.mode.capitalize()} · from the {samples.source.lower()} · seed {samples.seed} · "
                   f"temperature {samples.temperature:g}")
        names = [c.name for c in samples.cases]
        index = st.radio("Sample", range(len(names)), format_func=lambda i: names[i], horizontal=True,
                         key="gen_sample")
        sample = samples.cases[index]
        mask = Layer("Mask", f"{samples.key}:{index}:mask", sample.seg)
        generated = ViewSource(f"{samples.key}:{index}", sample, state.geometry, {"Mask": mask}, "Mask", samples.key)
        if use_niivue():  # the same viewer as the other pages; into a case, the host's volumes are a click away
            if samples.mode == app_state.INTO_CASE:
                st.caption("**Sample** and **Host** in the viewer bar flip between the generated scan and the case "
                           "as loaded, at the same place (voxels away from the tumour are identical).")
            niivue_sample_view(state, samples, index)
        elif samples.mode == app_state.INTO_CASE:  # original and generated side by side
            left, right = st.columns(2)
            with left:
                st.markdown("**Original**")
                viewer(ViewSource(f"{samples.key}:original", state.case, state.geometry, {"Mask": mask}, "Mask",
                                  samples.key), "gen_original", compact=True)
            with right:
                st.markdown("**Generated**")
                viewer(generated, "gen", compact=True)
        else:
            viewer(generated, "gen", compact=True)

        unet = models.weights_info("unet")
        cols = st.columns([1, 2])
        if cols[0].button("Check fidelity with the U-Net", disabled=not unet.exists, key="gen_fidelity",
                          help="Segment this sample and compare with the mask it was generated from."):
            bar = st.progress(0.0, text="Segmenting the sample…")
            try:
                actions.sample_fidelity(index, models.shipped_model("unet"), progress_reporter(bar))
            except Exception as exc:
                st.error(f"Segmentation failed: {exc}")
            bar.empty()
        if not unet.exists:
            cols[1].caption("The U-Net weights do not exist yet: no fidelity check.")
        if index in samples.fidelity:
            st.markdown("**U-Net on the sample vs. its mask** (high Dice: the tumour looks like the mask says)")
            st.dataframe(metrics_table(samples.fidelity[index]).style.format("{:.3f}"))

        cols = st.columns([1, 1.5, 1.5])
        naming = cols[0].selectbox("Files", ("2020", "2023"), key="gen_naming",
                                   index=("2020", "2023").index(default_convention(state)),
                                   format_func=lambda n: f"BraTS {n} ({'ET=4' if n == '2020' else 'ET=3'})",
                                   help="BraTS 2020 names (_t1, _t1ce, _t2, _flair, _seg) go with 2020 label values "
                                        "(ET=4); BraTS 2023 names (-t1n, -t1c, -t2w, -t2f, -seg) with ET=3.")
        cols[1].download_button(
            "Download this sample (.zip)", data=lambda: actions.cases_zip([sample], naming),
            file_name=f"{sample.name}.zip", mime="application/zip", on_click="ignore", key="gen_download_one",
            icon=":material/download:",
        )
        all_cases = list(samples.cases)
        cols[2].download_button(
            f"Download all {len(all_cases)} samples (.zip)", data=lambda: actions.cases_zip(all_cases, naming),
            file_name=f"{state.case.name}-synthetic.zip", mime="application/zip", on_click="ignore",
            key="gen_download_all", icon=":material/download:",
        )
