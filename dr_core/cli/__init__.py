"""Command lines. ``python -m dr_core.evaluate`` and ``python -m dr_core.predict`` (the reference guide's
names) run ``evaluate`` and ``predict`` here; ``presets`` turns a preset file into ``dvc exp run -S`` arguments."""
