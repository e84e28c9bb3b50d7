"""Who may send over MLLP: TLS with client certificates, and what each certificate may speak for.

MLLP itself has no authentication: anyone who can reach the port could write into any patient's
record (a fake allergy, a diagnosis, a merge). With TLS configured the listener requires a client
certificate signed by the configured CA, looks its subject common name up in the senders file,
and accepts a message only if the sending facility (MSH-4) is one of that sender's organisations
(ODS codes), the sending application (MSH-3) is one of its applications (if listed), and the
port's system is the sender's system. Anything else is refused (AR, SENDER_NOT_AUTHORISED) and
parked, so the integration team sees it.

The senders file (CAREBUS_MLLP_SENDERS_FILE), JSON:

    {"senders": [{"certificate_cn": "cerner.ral.example.nhs.uk", "system": "CERNER_MILLENNIUM",
                  "ods_codes": ["RAL"], "sending_applications": ["CERNER"]}]}

Pure apart from reading that file and the certificate files.
"""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.source_systems import BY_CODE, SourceSystemProfile
from schemas.errors import SetupError


class SendersFileError(SetupError, ValueError):
    """The senders file cannot be used: the connectors refuse to start rather than guess."""


@dataclass(frozen=True)
class SenderIdentity:
    certificate_cn: str
    system: str                                # SourceSystem code: which listener it may use
    ods_codes: frozenset[str]                  # organisations it may send for (MSH-4)
    sending_applications: frozenset[str]       # MSH-3 values allowed; empty: any


def load_senders(path: str | Path) -> dict[str, SenderIdentity]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SendersFileError(f"MLLP senders file {path} cannot be read: {type(exc).__name__}") from None
    out: dict[str, SenderIdentity] = {}
    for i, entry in enumerate(raw.get("senders", []) if isinstance(raw, dict) else []):
        try:
            sender = _sender(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise SendersFileError(f"MLLP senders file {path}: sender {i + 1}: {exc}") from None
        out[sender.certificate_cn] = sender
    if not out:
        raise SendersFileError(f"MLLP senders file {path} names no senders")
    return out


def _sender(entry: dict[str, Any]) -> SenderIdentity:
    system = str(entry["system"])
    if system not in BY_CODE:
        raise ValueError(f"system {system!r} is not one of {sorted(BY_CODE)}")
    ods = frozenset(str(o).strip().upper() for o in entry["ods_codes"])
    if not ods or "" in ods:
        raise ValueError("ods_codes must name at least one organisation")
    apps = frozenset(str(a).strip().upper() for a in entry.get("sending_applications", []))
    return SenderIdentity(str(entry["certificate_cn"]), system, ods, apps)


def common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (ssl's getpeercert() form)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def msh_sender(message: bytes) -> tuple[str, str]:
    """(MSH-3 sending application, MSH-4 sending facility), first components, upper case."""
    head = message.split(b"\r", 1)[0].decode("latin-1")
    if not head.startswith("MSH") or len(head) < 8:
        return "", ""
    sep = head[3]
    component = head[4] if len(head) > 4 else "^"
    fields = head.split(sep)
    def first(i: int) -> str:
        return fields[i].split(component, 1)[0].strip().upper() if len(fields) > i else ""
    return first(2), first(3)


def refusal(sender: SenderIdentity | None, profile: SourceSystemProfile, message: bytes) -> str | None:
    """Why this sender may not send this message on this listener; None if it may."""
    if sender is None:
        return "the client certificate is not registered as an MLLP sender"
    if sender.system != profile.code:
        return f"sender {sender.certificate_cn} is registered for {sender.system}, not {profile.code}"
    application, facility = msh_sender(message)
    if facility not in sender.ods_codes:
        return f"sender {sender.certificate_cn} may not send for organisation {facility or '(MSH-4 empty)'}"
    if sender.sending_applications and application not in sender.sending_applications:
        return f"sender {sender.certificate_cn} may not send as application {application or '(MSH-3 empty)'}"
    return None


def server_tls_context(certificate: str, key: str, client_ca: str) -> ssl.SSLContext:
    """Mutual TLS: the connector's certificate, and client certificates required, signed by client_ca."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certificate, key)
    return context
