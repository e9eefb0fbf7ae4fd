"""The ops CLI (``python -m opscli``): talks only to the app's HTTP API with a function key from the environment
(``SYNC_API_URL``, ``SYNC_FUNCTION_KEY``). Not deployed with the app (``.funcignore``). See docs/operations.md."""
