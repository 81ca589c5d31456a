"""EM for multi-view 3D part segmentation (PartSLIP++) as a probabilistic program."""
