"""Preprocessing stage: brain mask, z-score, crop/pad (:mod:`.preprocess`) and the content plausibility checks of a
loaded case (:mod:`.input_check`)."""
