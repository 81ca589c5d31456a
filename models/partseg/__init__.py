"""EM for multi-view 3D part segmentation (PartSLIP++) as a probabilistic program.

Modules: :mod:`.types` (the shared data), :mod:`.shapes`, :mod:`.render`,
:mod:`.superpoints`, :mod:`.masks` and :mod:`.data` (the generated benchmark: procedural
furniture, 10 z-buffer views, superpoints, "SAM-like" noisy masks, input validation),
:mod:`.counts` (the count form of the evidence), :mod:`.em` (the program, the E-steps,
the enum M-step and the EM loop), :mod:`.heuristic` (PartSLIP's grouping),
:mod:`.postprocess` (split, semantic vote, box filter, scores), :mod:`.metrics` (mIoU,
PartNet-style AP50, purity, the ground-truth bound), :mod:`.pipeline` (every method on
identical inputs) and :mod:`.benchmark` (``python -m ppl.models.partseg``).
"""
