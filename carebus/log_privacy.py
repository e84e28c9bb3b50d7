"""Logging without patient data: identifiers become keyed pseudonyms, clinical text is never logged.

`pseudonym("9434765919")` gives a short stable token (HMAC-SHA256 with CAREBUS_LOG_PSEUDONYM_KEY)
so an engineer can follow one patient through the logs without seeing who it is. The filter on
the root logger masks anything shaped like an NHS number that slips into a message anyway.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re

from carebus.config import load_settings

_NHS_LIKE = re.compile(r"(?<!\d)(\d{3}[ -]?\d{3}[ -]?\d{4})(?!\d)")


def pseudonym(identifier: str | None, key: str | None = None) -> str:
    if not identifier:
        return "-"
    key = key if key is not None else load_settings().log_pseudonym_key
    return "p:" + hmac.new(key.encode(), identifier.encode(), hashlib.sha256).hexdigest()[:12]


class RedactNhsNumbers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _NHS_LIKE.search(message):
            record.msg = _NHS_LIKE.sub("[redacted]", message)
            record.args = ()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactNhsNumbers())
    # Client libraries log every request URL at INFO; URLs may carry ids, and volume drowns signal.
    for noisy in ("httpx", "httpcore", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
