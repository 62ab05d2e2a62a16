"""One sub-package per method behind one registry (pipeline/config/methods.py); see docs/ARCHITECTURE.md."""
