"""`--routing-access-log`: the access log line of an opted-in request carries its dominant
domain, e.g. `... "POST /v1/chat/completions HTTP/1.1" 200 mofe_domain=medical:0.71`.

Uvicorn writes its access line (logger `uvicorn.access`) when the response *starts*, from
inside the app's `send`, so in the request's own task and context. The opt-in middleware
marks an opted-in request with a `Note` (a ContextVar); this filter then
- appends the domain when it is already known (non-streaming: the middleware holds the
  response start until the summary is in);
- holds the line back while it is not (streaming: the response starts before the last
  token), and the middleware re-emits it with the domain once the stream ends, so there is
  still exactly one access line per request.
Requests that did not opt in have no Note: their line is untouched. Off by default.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass

ACCESS_LOGGER = "uvicorn.access"


@dataclass
class Note:
    domain: str | None = None
    held: logging.LogRecord | None = None
    done: bool = False


current: ContextVar[Note | None] = ContextVar("mofe_access_note", default=None)


def dominant(summary: dict) -> str:
    domains = summary.get("domains") or {}
    if not domains:
        return "-"
    name = max(domains, key=domains.get)
    return f"{name}:{domains[name]:.2f}"


class DominantDomainFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        note = current.get()
        if note is None or getattr(record, "mofe_domain_done", False):
            return True
        if note.domain is None and not note.done:
            note.held = record  # re-emitted by `finish` with the domain
            return False
        record.msg = f"{record.msg} mofe_domain=%s"
        record.args = (*(record.args or ()), note.domain or "-")
        record.mofe_domain_done = True
        return True


def install() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, DominantDomainFilter) for f in logger.filters):
        logger.addFilter(DominantDomainFilter())


def finish(note: Note, summary: dict | None) -> None:
    """The request's summary is known (or will never be): emit a held line with it."""
    note.domain = dominant(summary) if summary and "domains" in summary else "-"
    note.done = True
    held, note.held = note.held, None
    if held is not None:
        logging.getLogger(ACCESS_LOGGER).handle(held)
