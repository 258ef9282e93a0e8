"""safeload's benchmark: what safety costs, measured side by side with the unsafe paths.

Run ``python -m bench`` (or ``scripts/run bench``); ``--quick`` is a small smoke run for CI. See
``bench/README.md`` for what each row measures and how.
"""
