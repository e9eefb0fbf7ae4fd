"""Local stand-ins for the cloud services, for development and tests only (never deployed; see .funcignore)."""
