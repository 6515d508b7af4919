"""Safe output names from untrusted text (DICOM PatientID, SeriesDescription, file names).

DICOM tags and file names come from other people's machines: a SeriesDescription of
``../../etc/passwd`` or ``/abs/path`` must never steer where synthct writes.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_LENGTH = 100
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows refuses as file names whatever their extension.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _clean(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    name = _NOT_ALLOWED.sub("_", ascii_text)
    name = re.sub(r"_{2,}", "_", name)
    # No leading dot (hidden file, "." or ".."), no leading dash (read as an option by tools).
    name = name.lstrip("._-")[:MAX_NAME_LENGTH].rstrip("._-")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = f"_{name}"[:MAX_NAME_LENGTH]
    return name


def safe_name(text: str, fallback: str) -> str:
    """A file-name component made from ``text``: only ``[A-Za-z0-9._-]``, no separators, no
    leading dot, at most ``MAX_NAME_LENGTH`` characters, never empty.

    Accented letters lose their accents; anything else becomes ``_``. When nothing usable
    remains, ``fallback`` (cleaned the same way, or ``"unnamed"``) is used.
    """
    return _clean(text) or _clean(fallback) or "unnamed"
