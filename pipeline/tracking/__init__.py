"""Experiment trackers (TensorBoard, W&B): stage figures and training logs, written beside the run."""
