"""Training side of s7: data, augmentation, loaders, the Accelerate loop, checkpoints, logging, reports."""
