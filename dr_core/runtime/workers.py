"""Process pools that are safe beside OpenCV and torch threads."""
from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


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
