"""selfimprove: teach language models to improve their own answers over turns."""

__version__ = "0.1.0"
