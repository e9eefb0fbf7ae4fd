"""Salesforce emulator (dev/test only): OAuth + REST over HTTPS for the real simple-salesforce, and Change Data
Capture over the Pub/Sub API (gRPC) for real stubs. Behaviour follows docs/reference/salesforce.md; guesses are
listed in docs/emulator-fidelity-salesforce.md.

Public API: :class:`SalesforceEmulator` (see ``server.py``) and :func:`decode_bitmap`.
"""

from emulators.salesforce.cdc import decode_bitmap
from emulators.salesforce.server import SalesforceEmulator

__all__ = ["SalesforceEmulator", "decode_bitmap"]
