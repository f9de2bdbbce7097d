"""drgrade's library: diabetic-retinopathy grading on fundus photographs.

Subpackages, in pipeline order:

- ``config``: ``params.yaml`` as typed, validated dataclasses; presets.
- ``runtime``: devices, DDP, worker pools, atomic writes, logging set-up.
- ``synthetic``: the built-in demo dataset.
- ``data``: labels, duplicates, the patient-level split, preprocessing, the cache, datasets, augmentation.
- ``models``: timm backbones, heads, self-describing checkpoints.
- ``training``: the two-stage fit, the epoch function, losses, mixup, optimiser.
- ``evaluation``: inference, metrics and intervals, operating points, reports, cross-validation pooling.
- ``cli``: command lines (``python -m dr_core.evaluate``, ``python -m dr_core.predict``).
"""
__version__ = "0.2.0"
