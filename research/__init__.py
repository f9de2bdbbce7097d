"""Research drivers around the DVC pipelines, run as ``python -m research.<name>`` from the repository root.

``ablation`` queues one DVC experiment per (variant, seed) and tabulates them; ``learning_curve`` reads
cross-validation experiments (``cv/dvc.yaml``) run at several training shares; ``cv_rescore`` asks more
of a cross-validation's fold models without training anything new. They use ``dr_core``'s public
functions only.
"""
