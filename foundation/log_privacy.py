"""Logging without patient data: identifiers become keyed pseudonyms, clinical text is never logged.

`pseudonym("9434765919")` gives a short stable token (HMAC-SHA256 with CAREBUS_LOG_PSEUDONYM_KEY)
so an engineer can follow one patient through the logs without seeing who it is. The filter on
the root logger masks anything shaped like an NHS number that slips into a message anyway.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from functools import lru_cache

from foundation.config import load_settings

_NHS_LIKE = re.compile(r"(?<!\d)(\d{3}[ -]?\d{3}[ -]?\d{4})(?!\d)")
# A pseudonym's hex can hold ten digits in a row: it is matched first and kept as it is.
_PSEUDONYM_OR_NHS_LIKE = re.compile(r"p:[0-9a-f]{12}(?![0-9a-f])|" + _NHS_LIKE.pattern)


def _redact(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0).startswith("p:") else "[redacted]"


def pseudonym(identifier: str | None, key: str | None = None) -> str:
    if not identifier:
        return "-"
    key = key if key is not None else _configured_key(os.environ.get("CAREBUS_LOG_PSEUDONYM_KEY"))
    return "p:" + hmac.new(key.encode(), identifier.encode(), hashlib.sha256).hexdigest()[:12]


@lru_cache(maxsize=4)
def _configured_key(_environment_value: str | None) -> str:
    # Reading every setting costs ~70 us; a connector pseudonymises once per event. Keyed on the
    # variable's value so that a changed environment (as in tests) is still honoured.
    return load_settings().log_pseudonym_key


class RedactNhsNumbers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _NHS_LIKE.search(message):
            record.msg = _PSEUDONYM_OR_NHS_LIKE.sub(_redact, message)
            record.args = ()
        return True


def configure_logging(level: int | str | None = None) -> None:
    """Level: CAREBUS_LOG_LEVEL (default INFO). At DEBUG the connectors log each message accepted
    (by pseudonym); at INFO only rejections, failures and what each service is doing."""
    wanted = logging.getLevelName(level or os.environ.get("CAREBUS_LOG_LEVEL", "INFO").upper())
    wanted = wanted if isinstance(wanted, int) else logging.INFO
    # DEBUG is for carebus's own lines: client libraries at DEBUG log request bodies.
    logging.basicConfig(level=max(wanted, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("carebus").setLevel(wanted)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactNhsNumbers())
    # Client libraries log every request URL at INFO; URLs may carry ids, and volume drowns signal.
    for noisy in ("httpx", "httpcore", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
