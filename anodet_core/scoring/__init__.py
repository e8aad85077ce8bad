"""From prepared inputs to decisions: the predictor, the one post-processing path, calibration."""
