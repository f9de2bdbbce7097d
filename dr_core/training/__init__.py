"""The two-stage fit (``fit``), the one epoch function (``engine``), losses, mixup, optimiser groups and
dvclive tracking."""
