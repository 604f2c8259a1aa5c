"""The API types: one source for the CRDs (crds/), the Python models and docs/api.md.

`python -m kopfvirt.api.gen` writes the generated files; tests/unit/test_api.py fails
when they drift from these types.
"""
