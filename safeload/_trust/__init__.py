"""The trust chain: which names resolve, from where, to which bytes, and whether those bytes are the pinned
ones.

Registries, the content-addressed store, hashing, signatures, attestations, the audit log, name
resolution, the I/O-free verification core and pinning. Nothing here imports torch, the loaders or the
integrations: it decides what may be loaded, never how.
"""
