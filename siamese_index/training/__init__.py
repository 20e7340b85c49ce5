"""Training towers, data sets and pairs, metrics, calibration of a model's pair threshold, plots."""
