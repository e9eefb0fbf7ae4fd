"""Two workers handling the same hint at once (a duplicated Graph notification) both create in Salesforce."""
from sync.adapters.memory import LogicalClock, MemoryAudit, MemoryLinkStore, MemoryQueue, MemorySide
from sync.engine import Engine
from sync.errors import AlreadyExists
from sync.model import Contact
from sync.planner import plan
from sync.policy import Policy, Side
from sync.ports import ContactChange
from sync.reconcile import reconcile_mailbox

MB = "ann@contoso.com"
clock = LogicalClock()
m365, sf = MemorySide(Side.M365, clock=clock), MemorySide(Side.SALESFORCE, clock=clock)
links, audit = MemoryLinkStore(), MemoryAudit()
engine = Engine(m365, sf, links, audit, MemoryQueue(), Policy(), [MB], clock=clock)
oid = m365.user_create(MB, Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"]))
hint = ContactChange(source=Side.M365, item_id=oid, mailbox=MB)

a = engine.read(hint, MB)          # worker A reads: no link, nothing in Salesforce
b = engine.read(hint, MB)          # worker B (the duplicate notification) reads the same
engine.execute(a, plan(a, engine.policy))          # A creates Salesforce contact 1 and links it
try:
    engine.execute(b, plan(b, engine.policy))      # B creates Salesforce contact 2, then its link write fails
except AlreadyExists as exc:
    print("worker B:", type(exc).__name__, "-> the host retries it; the retry finds the link and does nothing")
engine.sync_contact(hint)
print(reconcile_mailbox(engine, MB).summary())
print("Salesforce contacts for ada@example.com:", sorted(i for i, r in sf.snapshot().items()
                                                       if "ada@example.com" in r.contact.email_keys()))
