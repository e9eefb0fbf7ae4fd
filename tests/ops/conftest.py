"""The ops tests run against the local functions host with the emulators (the fixtures of
tests/functions/test_through_host.py): the CLI over real HTTP, the status page in a real browser."""

from tests.functions.test_through_host import stack, subscribed

__all__ = ["stack", "subscribed"]
