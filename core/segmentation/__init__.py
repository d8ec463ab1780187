"""Segmentation stage: the 3D U-Net and its losses (:mod:`.unet`), safe loading and whole-case inference
(:mod:`.inference`), segmentation on a case's own grid (:mod:`.segment`) and the metrics (:mod:`.metrics`).

CLI: ``python -m core.segment``.
"""
