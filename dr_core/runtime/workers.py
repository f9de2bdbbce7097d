"""Process pools that are safe beside OpenCV and torch threads, and how many processes to start."""
from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(requested: int, n_tasks: int | None = None) -> int:
    """Processes to start: ``requested``, 0 meaning one per usable core, never more than ``n_tasks``
    (when given) and at least 1."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0: all usable cores), got {requested}")
    n = requested or usable_cores()
    if n_tasks is not None:
        n = min(n, n_tasks)
    return max(1, n)


def pool_context(preload: list[str]) -> BaseContext:
    """Fork server where available, else spawn; never a plain fork.

    A forked child that calls ``cv2.setNumThreads`` can hang forever when the parent has used
    OpenCV's thread pool (seen with OpenCV 5.0, pthreads backend); torch's threads carry the same
    risk. The fork server is a fresh process that imports ``preload`` once, so workers still
    start in milliseconds. As with spawn, the main script needs the
    ``if __name__ == "__main__":`` guard.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(preload)
        return ctx
    return multiprocessing.get_context("spawn")
