"""Raw RFC-822 email -> classifier text: the subject plus the plain-text body, with transfer encodings decoded,
HTML reduced to its text and the result capped in length. Uses only the standard library ``email`` package."""

from __future__ import annotations

import html
import re
from email import message_from_bytes, message_from_string
from email.header import decode_header, make_header
from email.message import Message

DEFAULT_MAX_CHARS = 2000

_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BREAK = re.compile(r"<\s*(br|p|div|tr|li|h[1-6])\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")


def strip_html(text: str) -> str:
    """Crude HTML -> text: drop scripts, styles, comments and tags; unescape entities."""
    text = _SCRIPT.sub(" ", text)
    text = _COMMENT.sub(" ", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


def normalize_space(text: str) -> str:
    """Collapse runs of spaces, keep single blank lines between paragraphs, trim the ends."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def decode_subject(msg: Message) -> str:
    """The Subject header with RFC-2047 encoded words decoded (best effort)."""
    raw = msg.get("Subject")
    if raw is None:
        return ""
    try:
        return str(make_header(decode_header(str(raw))))
    except (LookupError, UnicodeError, ValueError, TypeError):
        return str(raw)


def _part_text(part: Message) -> str:
    """Decoded text of one leaf part (base64 / quoted-printable undone, charset applied)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("latin-1", errors="replace")


def body_text(msg: Message) -> str:
    """Plain-text parts if there are any, else the HTML parts reduced to text; attachments are ignored."""
    plain: list[str] = []
    markup: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if (part.get("Content-Disposition") or "").lower().startswith("attachment"):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            markup.append(_part_text(part))
    if plain:
        text = "\n".join(plain)
        return strip_html(text) if _TAG.search(text) and "</" in text else html.unescape(text)
    return "\n".join(strip_html(t) for t in markup)


def parse_email(raw: bytes | str) -> Message:
    """A lenient parse (compat32 policy) of raw message bytes or text."""
    return message_from_bytes(raw) if isinstance(raw, bytes) else message_from_string(raw)


def email_to_text(raw: bytes | str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """``"<subject>\\n\\n<body>"``, whitespace-normalised and cut to ``max_chars`` characters."""
    msg = parse_email(raw)
    subject = normalize_space(decode_subject(msg))
    body = normalize_space(body_text(msg))
    text = f"{subject}\n\n{body}" if subject else body
    return text[:max_chars].rstrip()
