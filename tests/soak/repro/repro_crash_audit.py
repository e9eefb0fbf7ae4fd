# ruff: noqa: SIM105, E501
"""B5: a worker that dies after its writes but before its audit row leaves an overridden edit with no trace."""
from sync.adapters.memory import LogicalClock, MemoryAudit, MemoryLinkStore, MemoryQueue, MemorySide
from sync.engine import Engine
from sync.model import Contact
from sync.policy import Policy, Side
from sync.ports import ContactChange
from sync.reconcile import reconcile_mailbox

MB = "ann@contoso.com"
clock = LogicalClock()
m365, sf = MemorySide(Side.M365, clock=clock), MemorySide(Side.SALESFORCE, clock=clock)
links, audit = MemoryLinkStore(), MemoryAudit()
engine = Engine(m365, sf, links, audit, MemoryQueue(), Policy(), [MB], clock=clock)
sf_id = sf.user_create(MB, Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], job_title="Dev"))
reconcile_mailbox(engine, MB)
(oid,) = list(m365.snapshot())
m365.user_edit(oid, {"job_title": "Outlook edit"})    # the same field edited on both sides: a conflict
sf.user_edit(sf_id, {"job_title": "Salesforce edit"})

real_save = links.save
def killed(*args, **kwargs):                            # SIGKILL right after the side writes
    links.save = real_save
    raise SystemExit("worker killed")
links.save = killed
try:
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
except SystemExit:
    pass
engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))   # the redelivered message
print("Outlook job_title now:", m365.snapshot()[oid].contact.job_title)
print("conflict rows in the audit:", [e for e in audit.entries if e.action == "conflict"])
print("audit actions:", [e.action for e in audit.entries])
