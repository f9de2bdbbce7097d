"""The built-in demo dataset: synthetic fundus photographs (``anatomy``, ``lesions``) graded 0-4 (``demo``)."""
