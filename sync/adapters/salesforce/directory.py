"""Who owns what in the org: the User of each synced mailbox and the Account of each company name.

- Users: a mailbox maps to the active User whose FederationIdentifier, else Email, equals it (case-insensitive),
  cached for ``user_cache_ttl_s``. A mailbox with no User, or several, raises ``BadData`` when used: never an empty
  stream.
- Accounts: a company name resolves to the Account of that Name (case-insensitive, oldest first, cached); failing
  that, to the one Account whose Website is on the contact's email domain (never a free-mail domain), so "Contoso"
  finds "Contoso, Inc." instead of a near-duplicate; failing that, a new Account (``create_missing_accounts``,
  the default), else ``BadData(fields=("company",), code="ACCOUNT_NOT_FOUND")``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sync.adapters.salesforce.errors import SIDE, collection_error
from sync.adapters.salesforce.rest import MAX_COLLECTION, RestClient, chunks
from sync.adapters.salesforce.soql import soql_quote
from sync.errors import BadData, SyncError
from sync.model import Contact, mailbox_ref

logger = logging.getLogger(__name__)

# Consumer mail domains never identify a company (account resolution by email domain skips them).
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com", "ymail.com",
    "icloud.com", "me.com", "mac.com", "aol.com", "gmx.com", "gmx.net", "gmx.de", "web.de", "mail.com",
    "proton.me", "protonmail.com", "zoho.com", "yandex.com", "yandex.ru", "qq.com", "163.com",
})


def _website_host(website: object) -> str:
    """'https://www.Contoso.com/about' -> 'contoso.com'."""
    text = str(website or "").strip().casefold()
    text = text.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return text[4:] if text.startswith("www.") else text


def domain_hints(contacts: Iterable[Contact]) -> dict[str, str]:
    """Company name (casefold) -> the email domain of a contact naming it (first one wins)."""
    out: dict[str, str] = {}
    for c in contacts:
        if c.company and c.emails and "@" in c.emails[0]:
            out.setdefault(c.company.casefold(), c.emails[0].rsplit("@", 1)[1].casefold())
    return out


class Directory:
    """Mailbox <-> owning User id (cached for ``user_cache_ttl_s``) and company name -> Account Id (cached).

    ``mailboxes``: the synced mailboxes (or a callable returning them). ``created_accounts``: the Accounts made for
    a contact's company."""

    def __init__(
        self,
        rest: RestClient,
        mailboxes: Sequence[str] | Callable[[], Sequence[str]],
        *,
        create_missing_accounts: bool = True,
        user_cache_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rest = rest
        self._mailboxes = mailboxes
        self._create_accounts = create_missing_accounts
        self._user_ttl, self._clock = user_cache_ttl_s, clock
        self._lock = threading.Lock()
        self._users: dict[str, str | None] = {}  # mailbox (casefold) -> user id (None: no/ambiguous user)
        self._owners: dict[str, str] = {}  # user id -> mailbox
        self._users_loaded_at: float | None = None
        self._seen_boxes: Sequence[str] | None = None  # the mailbox list last checked against ``_users``
        self._accounts: dict[str, str] = {}  # Account name (casefold) -> Id
        self._domains: dict[str, str | None] = {}  # email domain -> Account Id (None: no single match)
        self.created_accounts: list[str] = []

    # --- users ------------------------------------------------------------------------------------------------
    def _mailbox_list(self) -> list[str]:
        boxes = self._mailboxes() if callable(self._mailboxes) else self._mailboxes
        return list(boxes)

    def refresh_users(self) -> None:
        """Re-read the Users of the synced mailboxes (FederationIdentifier first, then Email; active only)."""
        boxes = self._mailbox_list()
        found: list[dict[str, Any]] = []
        for chunk in chunks(boxes, 100):
            lits = ", ".join(soql_quote(m) for m in chunk)
            found += self._rest.query(f"SELECT Id, Email, FederationIdentifier FROM User WHERE IsActive = true AND "
                                      f"(FederationIdentifier IN ({lits}) OR Email IN ({lits}))")
        users: dict[str, str | None] = {}
        for mailbox in boxes:
            key = mailbox.casefold()
            by_fed = {u["Id"] for u in found if str(u.get("FederationIdentifier") or "").casefold() == key}
            by_mail = {u["Id"] for u in found if str(u.get("Email") or "").casefold() == key}
            chosen = by_fed or by_mail
            if len(chosen) == 1:
                users[key] = next(iter(chosen))
            else:
                users[key] = None
                logger.warning("mailbox %s has %s Salesforce users", mailbox_ref(mailbox),
                               "no" if not chosen else "several")
        with self._lock:
            self._users = users
            self._owners = {uid: m for m, uid in zip(boxes, (users[b.casefold()] for b in boxes), strict=True) if uid}
            self._users_loaded_at = self._clock()

    def _ensure_users(self) -> None:
        loaded = self._users_loaded_at
        if loaded is None or self._clock() - loaded > self._user_ttl:
            self.refresh_users()
            return
        boxes = self._mailboxes() if callable(self._mailboxes) else self._mailboxes
        if boxes is not self._seen_boxes:  # the scope changed (a group member joined): look up the new ones now
            self._seen_boxes = boxes
            if any(m.casefold() not in self._users for m in boxes):
                self.refresh_users()

    def user_of(self, mailbox: str) -> str:
        """The owning User id for a mailbox; ``BadData`` when there is none (or several)."""
        self._ensure_users()
        uid = self._users.get(mailbox.casefold())
        if uid is None:
            raise BadData("no single active Salesforce user for this mailbox", code="OWNER_NOT_FOUND", side=SIDE,
                          item_id=mailbox_ref(mailbox))  # errors reach logs: never the UPN
        return uid

    def mailbox_of(self, user_id: str | None) -> str | None:
        self._ensure_users()
        return self._owners.get(user_id or "")

    # --- accounts ---------------------------------------------------------------------------------------------
    def resolve_accounts(
        self, names: Iterable[str], domains: Mapping[str, str] | None = None
    ) -> dict[str, str | SyncError]:
        """Account Id by name (case-insensitive); else, when ``domains`` gives the contact's email domain for that
        name, the one Account whose Website is on that domain; else a new Account when allowed. Errors per name."""
        wanted = {n.casefold(): n for n in names if n}
        out: dict[str, str | SyncError] = {k: self._accounts[k] for k in wanted if k in self._accounts}
        missing = [wanted[k] for k in wanted if k not in out]
        for chunk in chunks(missing, 100):
            rows = self._rest.query(f"SELECT Id, Name FROM Account WHERE Name IN "
                                    f"({', '.join(soql_quote(n) for n in chunk)}) ORDER BY CreatedDate, Id")
            for row in rows:
                key = str(row.get("Name") or "").casefold()
                if key in wanted and key not in out:  # oldest wins when names repeat
                    out[key] = self._accounts[key] = str(row["Id"])
        for key in [k for k in wanted if k not in out and (domains or {}).get(k)]:
            found = self._account_by_domain((domains or {})[key])
            if found is not None:
                out[key] = self._accounts[key] = found
        missing = [wanted[k] for k in wanted if k not in out]
        if missing and not self._create_accounts:
            for name in missing:
                out[name.casefold()] = BadData("no Account with this name", fields=("company",),
                                               code="ACCOUNT_NOT_FOUND", side=SIDE)
            return out
        for chunk in chunks(missing, MAX_COLLECTION):
            body = {"allOrNone": False, "records": [{"attributes": {"type": "Account"}, "Name": n} for n in chunk]}
            results = self._rest.restful("POST", body)
            for name, res in zip(chunk, results or [], strict=False):
                if res.get("success"):
                    out[name.casefold()] = self._accounts[name.casefold()] = str(res["id"])
                    self.created_accounts.append(str(res["id"]))
                    logger.info("created Account %s for a contact's company", res["id"])
                else:
                    out[name.casefold()] = collection_error(res, None)
        return out

    def _account_by_domain(self, domain: str) -> str | None:
        """The single Account whose Website host is ``domain`` or a parent of it (pat@sales.contoso.com ->
        www.contoso.com); None when none or several. Free-mail domains never identify a company."""
        domain = domain.casefold().strip(".")
        base = ".".join(domain.split(".")[-2:])
        if "." not in domain or domain in FREE_MAIL_DOMAINS or base in FREE_MAIL_DOMAINS:
            return None
        if domain in self._domains:
            return self._domains[domain]
        rows = self._rest.query(f"SELECT Id, Website FROM Account WHERE Website LIKE {soql_quote('%' + base + '%')}")
        hosts = {str(r["Id"]): _website_host(r.get("Website")) for r in rows}
        hits = [i for i, host in hosts.items() if host and (domain == host or domain.endswith("." + host))]
        found = hits[0] if len(hits) == 1 else None
        self._domains[domain] = found
        return found
