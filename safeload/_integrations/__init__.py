"""The kit the drop-ins share: a verified folder prepared for a library, and guards around its loaders.

``safeload.transformers``, ``.peft``, ``.diffusers``, ``.sentence_transformers``, ``.mlflow`` and
``safeload.patch()`` build on these; the guards make a host-side unpickle or an unlisted Hub request fail
while a library's loader runs.
"""
