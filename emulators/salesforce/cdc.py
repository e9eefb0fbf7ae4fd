"""ContactChangeEvent generation: Avro body, ChangeEventHeader, bitmap fields (docs/reference/salesforce.md §4.2–§4.4).

- CREATE / UNDELETE: every non-null field; ``changedFields`` empty (§4.2, §4.3).
- UPDATE: every schema field present, unchanged ones null; ``changedFields`` lists what changed plus
  ``LastModifiedDate``; ``nulledFields`` what became null (§4.3 "Event Deserialization Considerations").
- DELETE and GAP_* / GAP_OVERFLOW: header only (§4.3).
- Bitmaps: top-level ``"0x%X"`` with bit i = ``schema.fields[i]``; compound children as ``"{pos}-0x%X"`` (§4.4).
  As in the §4.4 worked example, a compound parent's own bit is not set when only its nested bitmap is.
- Datetimes are epoch-millisecond longs (§4.2 commitTimestamp; body datetimes likewise, ⚠ guess, see fidelity doc).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import fastavro

from emulators.salesforce.ids import epoch_ms

SCHEMA_PATH = Path(__file__).with_name("contact_change_event.avsc.json")
COMPOUNDS = {
    "Name": {"Salutation": "Salutation", "FirstName": "FirstName", "LastName": "LastName"},
    "MailingAddress": {"MailingStreet": "Street", "MailingCity": "City", "MailingState": "State",
                       "MailingPostalCode": "PostalCode", "MailingCountry": "Country"},
}
DATETIME_FIELDS = {"LastModifiedDate", "CreatedDate"}


class ChangeEventCodec:
    def __init__(self, custom_fields: tuple[str, ...] = ()) -> None:
        schema = json.loads(SCHEMA_PATH.read_text())
        for name in custom_fields:
            schema["fields"].append({"name": name, "type": ["null", "string"], "default": None})
        self.schema: dict[str, Any] = schema
        self.schema_json = json.dumps(schema, separators=(",", ":"))
        # Schema ids are opaque fingerprints (docs/reference/salesforce.md §5.1); 22 chars of base64url like real ones.
        digest = hashlib.md5(self.schema_json.encode()).digest()  # noqa: S324 (fingerprint, not security)
        self.schema_id = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        self._parsed = fastavro.parse_schema(copy.deepcopy(schema))
        self.top_index = {f["name"]: i for i, f in enumerate(schema["fields"])}
        # Contact field -> (top-level position, nested position or None)
        self.position: dict[str, tuple[int, int | None]] = {}
        for i, f in enumerate(schema["fields"]):
            if f["name"] in COMPOUNDS:
                nested = next(t for t in f["type"] if isinstance(t, dict))
                child_index = {c["name"]: j for j, c in enumerate(nested["fields"])}
                for contact_field, child in COMPOUNDS[f["name"]].items():
                    self.position[contact_field] = (i, child_index[child])
            elif i > 0:
                self.position[f["name"]] = (i, None)

    # -- body ---------------------------------------------------------------------------------------------------
    def empty_body(self) -> dict[str, Any]:
        return {f["name"]: None for f in self.schema["fields"][1:]}

    def _value(self, contact_field: str, value: Any) -> Any:
        if value is not None and contact_field in DATETIME_FIELDS:
            return epoch_ms(value)
        return value

    def _set(self, body: dict[str, Any], contact_field: str, value: Any) -> None:
        top, nested = self.position[contact_field]
        top_name = self.schema["fields"][top]["name"]
        if nested is None:
            body[top_name] = self._value(contact_field, value)
            return
        child = COMPOUNDS[top_name][contact_field]
        if body[top_name] is None:
            body[top_name] = dict.fromkeys(COMPOUNDS[top_name].values())
        body[top_name][child] = value

    def full_body(self, record: dict[str, Any]) -> dict[str, Any]:
        body = self.empty_body()
        for name in self.position:
            if record.get(name) is not None:
                self._set(body, name, record[name])
        return body

    def update_body(self, old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """Body with only changed fields set, and the changed / nulled bitmaps."""
        body = self.empty_body()
        changed: list[str] = []
        nulled: list[str] = []
        for name in self.position:
            # every update sets LastModifiedDate, so it is always listed, also when two writes share a millisecond
            if old.get(name) == new.get(name) and name != "LastModifiedDate":
                continue
            changed.append(name)
            if new.get(name) is None:
                nulled.append(name)
                top, nested = self.position[name]
                top_name = self.schema["fields"][top]["name"]
                if nested is not None and body[top_name] is None:
                    body[top_name] = dict.fromkeys(COMPOUNDS[top_name].values())
            else:
                self._set(body, name, new[name])
        return body, self.bitmaps(changed), self.bitmaps(nulled)

    def bitmaps(self, contact_fields: list[str]) -> list[str]:
        top = 0
        nested: dict[int, int] = {}
        for name in contact_fields:
            i, j = self.position[name]
            if j is None:
                top |= 1 << i
            else:
                nested[i] = nested.get(i, 0) | 1 << j
        if not top and not nested:
            return []
        return [f"0x{top:X}"] + [f"{i}-0x{v:X}" for i, v in sorted(nested.items())]

    # -- wire ---------------------------------------------------------------------------------------------------
    def encode(self, header: dict[str, Any], body: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._parsed, {"ChangeEventHeader": header, **body})
        return buf.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        return fastavro.schemaless_reader(io.BytesIO(payload), self._parsed)  # type: ignore[no-any-return]


def decode_bitmap(schema: dict[str, Any], bitmaps: list[str]) -> list[str]:
    """The §4.4 decoder (same rule as forcedotcom/pub-sub-api python/util/ChangeEventHeaderUtility.py)."""
    out: list[str] = []
    fields = schema["fields"]
    for bm in bitmaps:
        if bm.startswith("0x"):
            v = int(bm, 16)
            out += [f["name"] for i, f in enumerate(fields) if v >> i & 1]
        elif "-" in bm:
            pos, hx = bm.split("-", 1)
            parent = fields[int(pos)]
            t = parent["type"]
            rec = next(x for x in (t if isinstance(t, list) else [t])
                       if isinstance(x, dict) and x.get("type") == "record")
            v = int(hx, 16)
            out += [f'{parent["name"]}.{f["name"]}' for i, f in enumerate(rec["fields"]) if v >> i & 1]
    return out
