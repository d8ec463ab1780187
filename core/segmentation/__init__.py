"""Segmentation stage: the 3D U-Net and its losses (:mod:`.unet`), safe loading and whole-case inference
(:mod:`.inference`), segmentation on a case's own grid (:mod:`.segment`), the metrics (:mod:`.metrics`) and the
one "segment a case" use-case every entry point calls (:mod:`.pipeline`).

CLI: ``python -m core.segment``.
"""
