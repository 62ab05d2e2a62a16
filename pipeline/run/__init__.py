"""The run directory: its layout, the manifest, the stage lifecycle and the lock that lets one process drive a run."""
