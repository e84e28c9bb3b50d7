"""`carebus audit`'s client of the delivery API's audit routes.

The CLI reads nothing itself: the API applies the roles and records every read on
carebus.access-audit.v1, so a read from the terminal is audited exactly as one from any system.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from consumers.audit_trail import spreadsheet_safe
from schemas.errors import CarebusError

# Reading a long history from the log takes time; the API answers when it has all of it.
READ_TIMEOUT = 600.0


class AuditError(CarebusError, RuntimeError):
    """The API refused or failed; the message says why (no patient data)."""


class AuditClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(READ_TIMEOUT, connect=10.0))

    def _get(self, path: str, **params: str) -> httpx.Response:
        try:
            response = self.http.get(path, params={k: v for k, v in params.items() if v})
        except httpx.HTTPError as exc:
            raise AuditError(f"the delivery service did not answer ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AuditError(f"HTTP {response.status_code}: {detail}")
        return response

    def find(self, nhs_number: str, identifier: str, person: str, why: str) -> list[dict[str, Any]]:
        return self._get("/audit/persons", nhs_number=nhs_number, identifier=identifier, person_id=person,
                         why=why).json()

    def _persons(self, nhs_number: str, identifier: str, person: str, why: str) -> list[str]:
        found = self.find(nhs_number, identifier, person, why)
        if not found:
            raise AuditError("no person found")
        return [p["person_id"] for p in found]

    def records(self, nhs_number: str, identifier: str, person: str, why: str) -> list[dict[str, Any]]:
        """The current shared record of every person found."""
        persons = self._persons(nhs_number, identifier, person, why)
        return self._each(persons, "reading records", lambda p: self._get(f"/records/{p}", why=why).json())

    def _each(self, persons: list[str], description: str, read) -> list[Any]:  # noqa: ANN001
        """`read(person)` for every person, with a progress bar; None answers are left out."""
        out = []
        with _progress() as progress:
            task = progress.add_task(description, total=len(persons))
            for p in persons:
                answer = read(p)
                if answer is not None:
                    out.append(answer)
                progress.advance(task)
        return out

    def timelines(self, nhs_number: str, identifier: str, person: str, why: str, since: str, fmt: str) -> str:
        """The timeline of every person found (an NHS number may be on more than one)."""
        persons = self._persons(nhs_number, identifier, person, why)
        per_person = self._each(persons, "reading timelines from the log", lambda p: [
            {"person_id": p, **entry} for entry in self._get(f"/audit/persons/{p}/timeline", since=since, why=why).json()])
        return _render([row for rows in per_person for row in rows], fmt)

    def records_as_of(self, nhs_number: str, identifier: str, person: str, why: str, at: str, fmt: str) -> str:
        persons = self._persons(nhs_number, identifier, person, why)
        changes = self._each(persons, "reading records from the log", lambda p: self._as_of(p, at, why))
        if not changes:
            raise AuditError("no shared record at that time")
        if fmt == "csv":
            return _render([{"person_id": c["person_id"], "version": c["version"], "changed_at": c["changed_at"],
                             "record": json.dumps(c["record"], sort_keys=True)} for c in changes], "csv")
        return json.dumps(changes, indent=1)

    def _as_of(self, person: str, at: str, why: str) -> dict[str, Any] | None:
        try:
            return self._get(f"/audit/persons/{person}/as-of", at=at, why=why).json()
        except AuditError as exc:
            if "HTTP 404" in str(exc):      # this person had no record yet at that time
                return None
            raise


def _progress() -> Progress:
    # On stderr, so that `> file` and pipes get the data alone.
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["person_id"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: spreadsheet_safe(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                             for k, v in r.items()})
        return buf.getvalue()
    return json.dumps(rows, indent=1)
