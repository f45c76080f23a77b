"""The machinery behind ``bench/run.py``: device naming, running pytest-benchmark per package,
comparing against saved per-device baselines, and the generated results page.

Private to ``bench/``; nothing under ``packages/`` imports it.
"""
