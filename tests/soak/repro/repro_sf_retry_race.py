"""S1: a Salesforce update retried after 503 / REQUEST_LIMIT_EXCEEDED overwrites a user's edit made during the
backoff. SalesforceContactSide.update compares SystemModstamp once (_check_version) and then _call re-sends the PATCH
after each backoff (0.5 s .. 8 s) without comparing again."""
from sync.model import Contact
from tests.contract.salesforce_harness import SalesforceHarness

user_edit_during_backoff = []
h = SalesforceHarness(sleep=lambda s: user_edit_during_backoff.append(s) or h.user_edit(sf_id, {"job_title": "CTO"}))
try:
    sf_id = h.user_create(Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], job_title="Dev"))
    before = h.side.get(h.mailbox, sf_id)
    h.emu.faults.fail_next(status=503, path_contains="PATCH /sobjects/Contact")  # first PATCH not executed
    after = h.side.update(h.mailbox, sf_id, before.contact.with_values({"job_title": "Engineer"}),
                          fields=frozenset({"job_title"}), if_match=before.version)
    print("backoff sleeps:", user_edit_during_backoff, "| the user set 'CTO' during the backoff")
    print("Salesforce now holds:", h.emu.get_record(sf_id)["Title"], "| no PreconditionFailed was raised")
finally:
    h.close()
