"""Input/output stage: BraTS cases (:mod:`.case`), NIfTI files (:mod:`.nifti`), label conventions (:mod:`.labels`),
voxel orientation (:mod:`.orientation`) and the shipped weights with their model cards (:mod:`.weights`).

The base of ``core``: imports no other ``core`` stage.
"""
