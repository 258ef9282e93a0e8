"""The jail side of safeload: the bubblewrap launcher, its seccomp filter and limits, and the worker.

The worker (``sandbox.worker``) imports nothing from ``safeload`` and, on the default inert path, nothing
beyond the standard library. The host-side launcher lives in ``sandbox.launcher``.
"""
