"""Shared helpers of the steps, not steps: nothing here registers a step in `dwlib.steps.STEPS`.

The step modules one level up (`dwlib.steps.verify`, `…migrate`, `…plan` …) build on these:
Dataverse metadata (`dvmeta`), value maps between the two sides (`rowmap`), row checksums and the
reconciliation of both sides (`checksum`, `reconcile`), which rows dual-write would sync
(`eligibility`), the live round trip (`roundtrip`), DMF packages (`dmf_package`) and isolated bulk
writes (`bulkwrite`). A module that registers a step belongs in `dwlib.steps`, not here
(tests/steps/test_layout.py holds both ways).
"""
