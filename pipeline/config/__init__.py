"""The run config: sections, prompt templates, launch settings and the method registry (docs/ARCHITECTURE.md)."""
