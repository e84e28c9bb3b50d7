"""A shared record as a person reads it in a terminal (`carebus records show`). Pure: no I/O.

Demographics with where each value came from, then one table per clinical section, newest first,
each item with its sources. Works on the SharedRecord as the API returns it (dates as days since
1970-01-01, times as epoch milliseconds).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from rich.console import Group
from rich.table import Table

SECTION_TITLES = {"encounters": "Encounters", "problems": "Problems", "medications": "Medications",
                  "allergies": "Allergies", "observations": "Observations", "referrals": "Referrals",
                  "documents": "Documents"}
# The coded concept or label that says what an item is, and the time that places it, by section.
WHAT = {"encounters": "encounter_class", "problems": "code", "medications": "code", "allergies": "substance",
        "observations": "code", "referrals": "service", "documents": "type"}
WHEN = {"encounters": "start", "problems": "onset", "medications": "start", "allergies": "recorded",
        "observations": "effective", "referrals": "referred_at", "documents": "created"}


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M") if ms else ""


def _day(days: int | None) -> str:
    return (date(1970, 1, 1) + timedelta(days=days)).isoformat() if days is not None else ""


def _label(value: Any) -> str:
    if isinstance(value, dict):      # a CodedConcept
        return value.get("display") or value.get("code") or ""
    return str(value or "")


def _sources(provenance: list[dict[str, Any]]) -> str:
    return ", ".join(dict.fromkeys(f"{p['source_system']} {p['ods_code']}".strip() for p in provenance))


def _detail(section: str, item: dict[str, Any]) -> str:
    if section == "observations":
        value = item.get("value_quantity")
        return f"{value:g} {item.get('unit') or ''}".strip() if value is not None else (item.get("value_text") or "")
    if section == "encounters":
        return " · ".join(x for x in (item.get("location"), item.get("movement")) if x)
    if section == "allergies":
        return " · ".join(x for x in (item.get("reaction"), item.get("severity")) if x)
    if section == "medications":
        return item.get("dosage") or ""
    if section == "documents":
        return item.get("title") or ""
    return ""


def demographics_table(record: dict[str, Any]) -> Table:
    d, provenance = record["demographics"], record["demographics_provenance"]
    name = next(iter(d["names"]), None)
    values = {
        "NHS number": f"{d['nhs_number'] or ''} ({d['nhs_number_status']})",
        "name": f"{' '.join(name['given'])} {name['family']}".strip() if name else "",
        "birth date": _day(d["birth_date"]),
        "sex": d["sex"],
        "address": ", ".join([*d["addresses"][0]["lines"], d["addresses"][0].get("postcode") or ""]) if d["addresses"] else "",
        "registered practice": d["registered_practice_ods"] or "",
        "objects to sharing": "yes" if d["sharing_objection"] else "no",
    }
    field_of = {"NHS number": "nhs_number", "name": "names", "birth date": "birth_date", "sex": "sex",
                "address": "addresses", "registered practice": "registered_practice_ods"}
    table = Table(title=f"{record['person_id']} · version {record['version']} · {_time(record['updated_at'])}",
                  show_header=True)
    for col in ("", "value", "from"):
        table.add_column(col)
    for label, value in values.items():
        prov = provenance.get(field_of.get(label, ""))
        table.add_row(label, value, _sources([prov]) if prov else "")
    table.add_row("linked records", "\n".join(f"{s['system']} {s['local_identifier']['value']}" for s in record["sources"]), "")
    return table


def section_table(record: dict[str, Any], section: str) -> Table | None:
    items = record.get(section) or []
    if not items:
        return None
    table = Table(title=SECTION_TITLES[section])
    for col in ("when", "what", "detail", "status", "from"):
        table.add_column(col)
    when = WHEN[section]
    for item in sorted(items, key=lambda i: i.get(when) or 0, reverse=True):
        table.add_row(_time(item.get(when)), _label(item.get(WHAT[section])), _detail(section, item),
                      str(item.get("status") or ""), _sources(item["provenance"]))
    return table


def render(record: dict[str, Any]) -> Group:
    tables = [demographics_table(record), *filter(None, (section_table(record, s) for s in SECTION_TITLES))]
    return Group(*tables)
