"""After the links table is lost, a full reconcile rebuilds the links from the markers; what it cannot rebuild."""
from sync.adapters.memory import LogicalClock, MemoryAudit, MemoryLinkStore, MemoryQueue, MemorySide
from sync.engine import Engine
from sync.model import Contact
from sync.policy import Policy, Side
from sync.ports import ContactChange
from sync.reconcile import reconcile_mailbox

ANN, BOB = "ann@contoso.com", "bob@contoso.com"


def world():
    clock = LogicalClock()
    m365, sf = MemorySide(Side.M365, clock=clock), MemorySide(Side.SALESFORCE, clock=clock)
    engine = Engine(m365, sf, MemoryLinkStore(), MemoryAudit(), MemoryQueue(), Policy(), [ANN, BOB], clock=clock)
    ids = {n: sf.user_create(ANN, Contact(first_name=n, last_name="X", emails=[f"{n}@example.com"]))
           for n in ("kept", "gone", "moved")}
    for mb in (ANN, BOB):
        reconcile_mailbox(engine, mb)
    return engine, m365, sf, ids


def lose_links(engine):
    engine.links = MemoryLinkStore()  # the table is gone; a new empty one


def copies(m365, mb, sf_id):
    return [i for i, r in m365.snapshot().items() if r.owner == mb and r.marker == sf_id]


# L1: an Outlook delete leaves a tombstone (policy unlink); the tombstone is lost with the table
engine, m365, sf, ids = world()
(oid,) = copies(m365, ANN, ids["kept"])
m365.user_delete(oid)
engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))   # unlink: tombstone
lose_links(engine)
reconcile_mailbox(engine, ANN)
print("L1 Outlook-deleted contact back in Ann's folder:", copies(m365, ANN, ids["kept"]))

# L2: a Salesforce delete not yet processed (its CDC event was lost) when the table is lost
engine, m365, sf, ids = world()
sf.user_delete(ids["gone"])
lose_links(engine)
reconcile_mailbox(engine, ANN)
again = [i for i, r in sf.snapshot().items() if "gone@example.com" in r.contact.email_keys()]
print("L2 Salesforce-deleted contact re-created in Salesforce:", again, "(deleted:", ids["gone"], ")")

# L3: an owner change (Ann -> Bob) processed after the table is lost
engine, m365, sf, ids = world()
lose_links(engine)
sf.user_set_owner(ids["moved"], BOB)
engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=ids["moved"]))
for mb in (ANN, BOB):
    print("   ", reconcile_mailbox(engine, mb).summary())
print("L3 copies of the moved contact: Ann", copies(m365, ANN, ids["moved"]), "Bob", copies(m365, BOB, ids["moved"]))
