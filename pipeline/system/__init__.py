"""Atomic file writes and child process groups: what every layer above relies on to leave no torn output and no orphan."""
