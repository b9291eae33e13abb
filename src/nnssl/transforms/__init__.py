"""Per-sample transforms: spatial augmentation (crop-first) and masks for masked image modelling."""
