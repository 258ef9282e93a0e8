"""What runs inside the jail: the worker, started by path as the top-level package ``worker``.

The installed distribution ships this folder as ``safeload._sandbox`` (so safeload claims no import
name but its own); the host imports from it only what both sides share (dtype table, caps, the HTTP
rules) and starts the worker with :mod:`safeload._jail.launcher`. The worker imports nothing from
``safeload`` and, on the default inert path, nothing beyond the standard library.
"""
