"""Loading: turning verified bytes into tensors without running them.

Format detection, the host side of the worker's manifest, the rebuild of tensors from mapped storage,
``safeload.load``/``state_dict``, conversion and inspection. Pickle-family bytes go only to the jail
(:mod:`safeload._jail`); this layer never imports the integrations.
"""
