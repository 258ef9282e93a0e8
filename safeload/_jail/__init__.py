"""The host side of the jail: tiers, the bubblewrap launcher, seccomp, limits, privileges, the fetch broker.

What runs inside the jail lives in the repository's ``sandbox/`` folder and ships as
:mod:`safeload._sandbox`; it is started by path, never imported by name into the host beyond the
constants and rules both sides share. This layer imports only :mod:`safeload.errors` and the jail's own
shared modules.
"""
