"""In-memory mailbox state of the Graph emulator: users, contact folders, contacts, delta rounds.

Not thread-safe by itself: the server holds ``Store.lock`` around every call. Every write returns the
``ChangeEvent``s it caused so the caller can deliver change notifications after releasing the lock.
Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import base64
import copy
import itertools
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .odata import PropertyId, property_id_key

# §1.1 contact properties (CSDL). Value is the default rendered for an unset property (§1.3 canonical JSON).
STRING_PROPS = [
    "assistantName",
    "birthday",
    "businessHomePage",
    "companyName",
    "department",
    "displayName",
    "fileAs",
    "generation",
    "givenName",
    "initials",
    "jobTitle",
    "manager",
    "middleName",
    "mobilePhone",
    "nickName",
    "officeLocation",
    "personalNotes",
    "profession",
    "spouseName",
    "surname",
    "title",
    "yomiCompanyName",
    "yomiGivenName",
    "yomiSurname",
]
COLLECTION_PROPS = ["businessPhones", "categories", "children", "emailAddresses", "homePhones", "imAddresses"]
ADDRESS_PROPS = ["businessAddress", "homeAddress", "otherAddress"]
SINGLE_EMAIL_PROPS = ["primaryEmailAddress", "secondaryEmailAddress", "tertiaryEmailAddress"]
WRITABLE_PROPS = frozenset(STRING_PROPS + COLLECTION_PROPS + ADDRESS_PROPS + SINGLE_EMAIL_PROPS)
# §8.2: accepted and ignored in POST/PATCH bodies.
READ_ONLY_PROPS = frozenset({"id", "changeKey", "createdDateTime", "lastModifiedDateTime", "parentFolderId"})
NAV_PROPS = frozenset({"singleValueExtendedProperties", "multiValueExtendedProperties"})
SERVER_PROPS = ("id", "createdDateTime", "lastModifiedDateTime", "changeKey", "parentFolderId")
ALL_CONTACT_PROPS = frozenset(WRITABLE_PROPS | READ_ONLY_PROPS)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _opaque(prefix: bytes, n: int = 24) -> str:
    # §8.4: opaque base64-like ids; URL-safe alphabet so they survive paths unencoded.
    return base64.urlsafe_b64encode(prefix + os.urandom(n)).decode()


def new_change_key() -> str:
    # §1.5: changeKey changes on every write; "EQAAABYAAAA…" family as in the docs' examples.
    return base64.b64encode(b"\x11\x00\x00\x00\x16\x00\x00\x00" + os.urandom(18)).decode()


class GraphError(Exception):
    """An error that renders as the Graph JSON error envelope (§7.3, §8.3)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# §3.3 delta resets, the three codes clients meet: status and message per code. 410 syncStateNotFound and
# resyncRequired are Graph's documented codes (errors page); 400 SyncStateInvalid is seen in the wild (corso).
DELTA_RESETS: dict[str, tuple[int, str]] = {
    "SyncStateNotFound": (410, "The sync state generation is not found. The delta token is expired and data must be "
                               "synchronized again."),
    "SyncStateInvalid": (400, "The sync state is invalid. Synchronize again without a token."),
    "resyncRequired": (410, "The delta token is no longer valid, and the app must reset the sync state."),
}


def delta_reset_error(code: str) -> GraphError:
    status, message = DELTA_RESETS[code]
    return GraphError(status, code, message)


def not_found(what: str) -> GraphError:
    # §8.3: unknown id → 404 ErrorItemNotFound ([OBSERVED-IN-WILD]).
    return GraphError(404, "ErrorItemNotFound", f"The specified object was not found in the store. ({what})")


@dataclass
class Folder:
    id: str
    display_name: str
    parent_id: str
    ext: dict[tuple[str, ...], tuple[str, str | None]] = field(default_factory=dict)  # as Contact.ext


@dataclass
class Contact:
    id: str
    folder_id: str
    props: dict[str, Any]
    change_key: str
    created: str
    modified: str
    seq: int
    ext: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)  # property_id_key -> (id, value)

    @property
    def etag(self) -> str:
        return f'W/"{self.change_key}"'  # §1.5: @odata.etag = W/"<changeKey>" [OBSERVED-IN-WILD]


@dataclass
class Mailbox:
    id: str
    upn: str
    display_name: str
    root_folder_id: str
    # The hidden Deleted Items folder (a mail folder: not a contact folder, never listed); a deleted contact folder
    # moves under it (§2.3).
    deleted_items_id: str = field(default_factory=lambda: _opaque(b"\x00\x00deli"))
    folders: dict[str, Folder] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    seq: int = 0
    # folder id -> [(seq, contact id)] of contacts that left the folder (deleted or moved out), for delta @removed.
    tombstones: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeEvent:
    """One change to one contact as seen from one folder (for notifications)."""

    mailbox_id: str
    folder_id: str
    contact_id: str
    change_type: str  # created | updated | deleted
    etag: str | None


@dataclass
class DeltaRound:
    mailbox_id: str
    folder_id: str
    items: list[tuple[str, bool]]  # (contact id, removed)
    select: list[str] | None
    next_since: int


@dataclass
class DeltaToken:
    round: DeltaRound | None  # skip token: position in a round
    offset: int
    mailbox_id: str
    folder_id: str
    since: int  # delta token: changes after this seq
    select: list[str] | None


class Store:
    """All mailboxes. Callers hold ``self.lock``."""

    MAX_TOKENS = 10_000  # §3.3: tokens live in a bounded cache; the oldest are evicted.

    def __init__(self, tenant_id: str) -> None:
        self.lock = threading.RLock()
        self.tenant_id = tenant_id
        self.mailboxes: dict[str, Mailbox] = {}
        self.tokens: OrderedDict[str, DeltaToken] = OrderedDict()
        self.dead_tokens: dict[str, str] = {}  # token -> the delta reset code it answers (expire_tokens)
        self._order = itertools.count()

    # ---- users ---------------------------------------------------------------------------------------------
    def add_user(self, upn: str, user_id: str | None = None, display_name: str | None = None) -> Mailbox:
        existing = self.find_user(upn)
        if existing:
            return existing
        uid = user_id or str(uuid.uuid4())
        root = _opaque(b"\x00\x00root")
        mb = Mailbox(id=uid, upn=upn, display_name=display_name or upn.split("@")[0], root_folder_id=root)
        # The hidden default "Contacts" folder (§2.2); listed folders are its children.
        mb.folders[root] = Folder(root, "Contacts", _opaque(b"\x00\x00msgroot"))
        self.mailboxes[uid] = mb
        return mb

    def find_user(self, ref: str) -> Mailbox | None:
        if ref in self.mailboxes:
            return self.mailboxes[ref]
        ref_l = ref.lower()
        if ref_l.startswith("aad-upn:"):
            ref_l = ref_l[len("aad-upn:") :]
        for mb in self.mailboxes.values():
            if mb.upn.lower() == ref_l or mb.id.lower() == ref_l:
                return mb
        return None

    def user(self, ref: str) -> Mailbox:
        mb = self.find_user(ref)
        if mb is None:
            # [OBSERVED-IN-WILD] Exchange answers an unknown mailbox with 404 ErrorInvalidUser.
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
        return mb

    @staticmethod
    def render_user(mb: Mailbox) -> dict[str, Any]:
        return {"id": mb.id, "userPrincipalName": mb.upn, "displayName": mb.display_name, "mail": mb.upn}

    # ---- folders -------------------------------------------------------------------------------------------
    def folder(self, mb: Mailbox, folder_id: str | None) -> Folder:
        if folder_id is None:
            return mb.folders[mb.root_folder_id]
        f = mb.folders.get(folder_id)
        if f is None:
            raise not_found("folder")
        return f

    def child_folders(self, mb: Mailbox, parent_id: str) -> list[Folder]:
        return [f for f in mb.folders.values() if f.parent_id == parent_id]

    def create_folder(self, mb: Mailbox, parent_id: str, display_name: Any) -> Folder:
        if not isinstance(display_name, str) or not display_name.strip():
            raise GraphError(400, "ErrorInvalidRequest", "displayName is required.")
        self.folder(mb, parent_id)
        if any(f.display_name.lower() == display_name.lower() for f in self.child_folders(mb, parent_id)):
            # §2.2 "Duplicate folder name": 400 ErrorFolderExists [OBSERVED-IN-WILD].
            raise GraphError(400, "ErrorFolderExists", "A folder with the specified name already exists.")
        f = Folder(_opaque(b"\x00\x00fold"), display_name, parent_id)
        mb.folders[f.id] = f
        return f

    def delete_folder(self, mb: Mailbox, folder_id: str, *, permanent: bool = False,
                      keep_delta: bool = False) -> list[ChangeEvent]:
        """§2.3: DELETE is soft: the folder, its subfolders and their contacts move to Deleted Items, keeping their
        ids (the contacts still answer by id, their ``parentFolderId`` unchanged); each contact is notified as
        deleted from the folder and shows in its delta as removed, and the folder's delta tokens are dropped (how
        Exchange treats them is not documented: the strict choice). ``keep_delta`` (``Faults.
        folder_delete_keeps_delta``) is the other reading: the folder's delta links keep answering and report
        nothing (its contacts moved with it). ``permanentDelete`` (or deleting a folder that is already in Deleted
        Items) removes them for good."""
        if folder_id == mb.root_folder_id:
            raise GraphError(403, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
        f = self.folder(mb, folder_id)
        if not permanent and not self._in_deleted_items(mb, f):
            f.parent_id = mb.deleted_items_id
            return self._leave(mb, f, keep_delta)
        events: list[ChangeEvent] = []
        for child in self.child_folders(mb, folder_id):
            events += self.delete_folder(mb, child.id, permanent=True)
        for c in [c for c in mb.contacts.values() if c.folder_id == folder_id]:
            events += self.delete_contact(mb, c.id)
        del mb.folders[folder_id]
        self.tokens = OrderedDict((k, t) for k, t in self.tokens.items() if t.folder_id != folder_id)
        return events

    def _in_deleted_items(self, mb: Mailbox, f: Folder) -> bool:
        while f.parent_id in mb.folders:
            f = mb.folders[f.parent_id]
        return f.parent_id == mb.deleted_items_id

    def _leave(self, mb: Mailbox, f: Folder, keep_delta: bool = False) -> list[ChangeEvent]:
        """The contacts of ``f`` (and its subfolders), moved with it to Deleted Items: gone from its views."""
        events: list[ChangeEvent] = []
        for child in self.child_folders(mb, f.id):
            events += self._leave(mb, child, keep_delta)
        for c in self.contacts_in(mb, f.id):
            if not keep_delta:
                mb.seq += 1
                mb.tombstones.setdefault(f.id, []).append((mb.seq, c.id))
            events.append(ChangeEvent(mb.id, f.id, c.id, "deleted", None))
        if not keep_delta:
            self.tokens = OrderedDict((k, t) for k, t in self.tokens.items() if t.folder_id != f.id)
        return events

    def set_folder_props(self, f: Folder, body: Any) -> None:
        """``displayName`` and ``singleValueExtendedProperties`` of a folder create or PATCH."""
        if not isinstance(body, dict):
            raise GraphError(400, "RequestBodyRead", "The request body must be a JSON object.")
        for ep in body.get("singleValueExtendedProperties") or []:
            if not isinstance(ep, dict) or not isinstance(ep.get("id"), str):
                raise GraphError(400, "ErrorInvalidExtendedProperty", "Extended property needs an id.")
            val = ep.get("value")
            f.ext[property_id_key(ep["id"])] = (ep["id"], val if val is None else str(val))

    @staticmethod
    def render_folder(f: Folder, expand_filter: Any = None, expand: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f.id, "displayName": f.display_name, "parentFolderId": f.parent_id}
        if expand:
            eps = [{"id": PropertyId(i), "value": v} for i, v in f.ext.values()]
            out["singleValueExtendedProperties"] = [ep for ep in eps if expand_filter is None or expand_filter(ep)]
        return out

    # ---- contacts ------------------------------------------------------------------------------------------
    def contact(self, mb: Mailbox, contact_id: str, folder_id: str | None = None) -> Contact:
        # Item ids are mailbox-wide (§1.8): a folder-scoped item path finds the item in any folder (the folder must
        # exist); the answer's parentFolderId says where it is. GET, PATCH and DELETE alike.
        if folder_id is not None:
            self.folder(mb, folder_id)
        c = mb.contacts.get(contact_id)
        if c is None:
            raise not_found("contact")
        return c

    def contacts_in(self, mb: Mailbox, folder_id: str) -> list[Contact]:
        return [c for c in mb.contacts.values() if c.folder_id == folder_id]

    @staticmethod
    def _bump(mb: Mailbox, c: Contact) -> None:
        mb.seq += 1
        c.seq = mb.seq
        c.change_key = new_change_key()
        c.modified = _now()

    @staticmethod
    def _apply(c: Contact, body: dict[str, Any], *, creating: bool) -> None:
        if not isinstance(body, dict):
            raise GraphError(400, "RequestBodyRead", "The request body must be a JSON object.")
        names_before = (c.props.get("givenName"), c.props.get("middleName"), c.props.get("surname"))
        for key, value in body.items():
            if key.startswith("@odata.") or key in READ_ONLY_PROPS:
                continue  # §8.2: accept and ignore annotations and read-only fields
            if key == "singleValueExtendedProperties":
                for ep in value or []:
                    if not isinstance(ep, dict) or not isinstance(ep.get("id"), str):
                        raise GraphError(400, "ErrorInvalidExtendedProperty", "Extended property needs an id.")
                    val = ep.get("value")
                    c.ext[property_id_key(ep["id"])] = (ep["id"], val if val is None else str(val))
                continue
            if key == "multiValueExtendedProperties":
                continue  # accepted, not modelled
            if key not in WRITABLE_PROPS:
                # §7.7/§8.2: unknown (e.g. snake_case) properties are rejected with 400 [OBSERVED-IN-WILD].
                raise GraphError(
                    400,
                    "RequestBodyRead",
                    f"The property '{key}' does not exist on type 'microsoft.graph.contact'. Make sure to only use "
                    "property names that are defined by the type or mark the type as open type.",
                )
            if key in COLLECTION_PROPS and value is not None and not isinstance(value, list):
                raise GraphError(400, "RequestBodyRead", f"'{key}' must be a collection.")
            if key in COLLECTION_PROPS and value is None:
                value = []
            if key in ADDRESS_PROPS and value is None:
                value = {}
            c.props[key] = copy.deepcopy(value)  # §1.4 PATCH: absent keeps, null clears, arrays replace
        names_after = (c.props.get("givenName"), c.props.get("middleName"), c.props.get("surname"))
        # §1.1 displayName: "Later updates to other properties may cause an automatically generated value to overwrite
        # the displayName value you have specified" — we regenerate when name parts change without a displayName.
        if "displayName" not in body and (creating or names_after != names_before):
            generated = " ".join(p for p in names_after if p)
            if generated or creating:
                c.props["displayName"] = generated or c.props.get("displayName")

    def create_contact(self, mb: Mailbox, folder_id: str, body: dict[str, Any]) -> tuple[Contact, list[ChangeEvent]]:
        self.folder(mb, folder_id)
        now = _now()
        c = Contact(_opaque(b"\x00\x00cont"), folder_id, {}, "", now, now, 0)
        self._apply(c, body, creating=True)
        self._bump(mb, c)
        c.modified = c.created
        mb.contacts[c.id] = c
        return c, [ChangeEvent(mb.id, folder_id, c.id, "created", c.etag)]

    @staticmethod
    def check_if_match(c: Contact, if_match: str | None) -> None:
        # §1.5: stale If-Match → 412 ErrorIrresolvableConflict; absent → last write wins.
        if not if_match or if_match.strip() == "*":
            return
        wanted = {t.strip() for t in if_match.split(",")}
        accepted = {c.etag, f'"{c.change_key}"', c.change_key}
        if not wanted & accepted:
            raise GraphError(
                412,
                "ErrorIrresolvableConflict",
                "The send or update operation could not be performed because the change key passed in the request "
                "does not match the current change key for the item.",
            )

    def update_contact(
        self,
        mb: Mailbox,
        contact_id: str,
        body: dict[str, Any],
        folder_id: str | None = None,
        if_match: str | None = None,
    ) -> tuple[Contact, list[ChangeEvent]]:
        c = self.contact(mb, contact_id, folder_id)
        self.check_if_match(c, if_match)
        trial = copy.deepcopy(c)
        self._apply(trial, body, creating=False)  # validate fully before mutating
        c.props, c.ext = trial.props, trial.ext
        self._bump(mb, c)
        return c, [ChangeEvent(mb.id, c.folder_id, c.id, "updated", c.etag)]

    def delete_contact(
        self, mb: Mailbox, contact_id: str, folder_id: str | None = None, if_match: str | None = None
    ) -> list[ChangeEvent]:
        c = self.contact(mb, contact_id, folder_id)
        self.check_if_match(c, if_match)
        del mb.contacts[contact_id]
        mb.seq += 1
        mb.tombstones.setdefault(c.folder_id, []).append((mb.seq, c.id))
        return [ChangeEvent(mb.id, c.folder_id, c.id, "deleted", None)]

    def move_contact(self, mb: Mailbox, contact_id: str, folder_id: str) -> tuple[Contact, list[ChangeEvent]]:
        """Move as the user would in Outlook (v1.0 has no move action for contacts, §1.1 parentFolderId)."""
        c = self.contact(mb, contact_id)
        self.folder(mb, folder_id)
        old = c.folder_id
        if old == folder_id:
            return c, []
        c.folder_id = folder_id
        self._bump(mb, c)
        # §3.2: a move out of a tracked folder shows as @removed {"reason":"deleted"} there (inferred, not documented).
        mb.tombstones.setdefault(old, []).append((c.seq, c.id))
        return c, [
            ChangeEvent(mb.id, old, c.id, "deleted", None),
            ChangeEvent(mb.id, folder_id, c.id, "created", c.etag),
        ]

    @staticmethod
    def render_contact(
        c: Contact,
        select: list[str] | None = None,
        expand_filter: Any = None,
        expand: bool = False,
        *,
        copy_values: bool = True,
    ) -> dict[str, Any]:
        full: dict[str, Any] = {
            "@odata.etag": c.etag,
            "id": c.id,
            "createdDateTime": c.created,
            "lastModifiedDateTime": c.modified,
            "changeKey": c.change_key,
            "categories": [],
            "parentFolderId": c.folder_id,
        }
        for p in STRING_PROPS + SINGLE_EMAIL_PROPS:
            full[p] = None
        for p in COLLECTION_PROPS:
            full[p] = []
        for p in ADDRESS_PROPS:
            full[p] = {}
        full.update(copy.deepcopy(c.props) if copy_values else c.props)
        if select is not None:
            wanted = {s.lower() for s in select}
            unknown = wanted - {p.lower() for p in ALL_CONTACT_PROPS}
            if unknown:
                raise GraphError(
                    400,
                    "RequestBroker--ParseUri",
                    f"Could not find a property named '{sorted(unknown)[0]}' on type 'microsoft.graph.contact'.",
                )
            full = {k: v for k, v in full.items() if k in ("@odata.etag", "id") or k.lower() in wanted}
        if expand:
            eps = [{"id": PropertyId(i), "value": v} for i, v in c.ext.values()]
            full["singleValueExtendedProperties"] = [ep for ep in eps if expand_filter is None or expand_filter(ep)]
        return full

    @staticmethod
    def filter_view(c: Contact) -> dict[str, Any]:
        """The object a $filter sees: properties plus extended properties. Read only, so it shares the contact's
        values instead of copying them (a $filter evaluates it for every contact of the folder)."""
        view = Store.render_contact(c, copy_values=False)
        view["singleValueExtendedProperties"] = [{"id": PropertyId(i), "value": v} for i, v in c.ext.values()]
        return view

    # ---- delta (§3) ----------------------------------------------------------------------------------------
    def _remember(self, tok: DeltaToken) -> str:
        key = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.tokens[key] = tok
        while len(self.tokens) > self.MAX_TOKENS:
            self.tokens.popitem(last=False)
        return key

    def start_round(self, mb: Mailbox, folder_id: str, since: int | None, select: list[str] | None) -> DeltaToken:
        """Start a delta round: since=None is the initial round (current items only, §3.2)."""
        self.folder(mb, folder_id)
        current = sorted(self.contacts_in(mb, folder_id), key=lambda c: c.seq)
        if since is None:
            items = [(c.id, False) for c in current]
        else:
            present = {c.id for c in current}
            items = [(c.id, False) for c in current if c.seq > since]
            gone = []
            for seq, cid in mb.tombstones.get(folder_id, []):
                if seq > since and cid not in present and (cid, True) not in gone:
                    gone.append((cid, True))
            items = gone + items
        rnd = DeltaRound(mb.id, folder_id, items, select, mb.seq)
        return DeltaToken(rnd, 0, mb.id, folder_id, mb.seq, select)

    def token(self, key: str) -> DeltaToken:
        dead = self.dead_tokens.get(key)
        if dead is not None:
            raise delta_reset_error(dead)
        tok = self.tokens.get(key)
        if tok is None:
            raise delta_reset_error("SyncStateNotFound")  # §3.3: expired/evicted token
        return tok

    def skip_token(self, rnd: DeltaRound, offset: int) -> str:
        return self._remember(DeltaToken(rnd, offset, rnd.mailbox_id, rnd.folder_id, rnd.next_since, rnd.select))

    def delta_token(self, rnd: DeltaRound) -> str:
        return self._remember(DeltaToken(None, 0, rnd.mailbox_id, rnd.folder_id, rnd.next_since, rnd.select))

    def expire_tokens(self, mailbox_id: str | None = None, code: str = "SyncStateNotFound") -> int:
        """Every token (of one mailbox or all) answers the delta reset ``code`` from now on (``DELTA_RESETS``)."""
        if code not in DELTA_RESETS:
            raise ValueError(f"unknown delta reset code {code!r}")
        doomed = [k for k, t in self.tokens.items() if mailbox_id is None or t.mailbox_id == mailbox_id]
        for k in doomed:
            del self.tokens[k]
            self.dead_tokens[k] = code
        while len(self.dead_tokens) > self.MAX_TOKENS:
            del self.dead_tokens[next(iter(self.dead_tokens))]
        return len(doomed)
