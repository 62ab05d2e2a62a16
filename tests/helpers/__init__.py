"""Plain helpers shared by the test modules (config dicts, run directories, records, processes).

Fixtures live in ``tests/conftest.py``; a test module imports from here or from
the conftest's fixtures, never from another test module.
"""
