"""Viewer stage: slices, windowing and overlays (:mod:`.render`), mask editing (:mod:`.mask_edit`) and what the
NiiVue browser viewer needs (:mod:`.niivue`)."""
