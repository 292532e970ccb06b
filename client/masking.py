"""`mask_url`: a Redis URL as it may appear in a log line or a message, with its password replaced by ***.

Every message of the product that names a Redis URL goes through this one function. It must hide the password
of a malformed URL too (a typo is exactly when the URL ends up in an error message): it works on the text, not
on what a URL parser makes of it.
"""

from __future__ import annotations

import re

# ``password=…`` in the query, up to the next option
_QUERY_PASSWORD = re.compile(r"(?i)([?&;]password=)[^&;#]*")
# the scheme (with however many slashes a typo left) and the user name, before the password
_SCHEME_AND_USER = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:/*)?)([^:/@?#]*)")


def mask_url(url: str) -> str:
    """The URL with the password (in the user part or the ``password=`` query option) replaced by ***.

    The user part ends at the *last* ``@``, so a password with an ``@``, ``:`` or ``/`` in it, encoded or not,
    is masked whole.
    """
    text = _QUERY_PASSWORD.sub(r"\1***", url)
    head, at, tail = text.rpartition("@")
    if not at:
        return text
    match = _SCHEME_AND_USER.match(head)
    scheme, user = (match.group(1), match.group(2)) if match else ("", "")
    secret = head[len(scheme) + len(user) :]
    if not secret.startswith(":"):
        return f"{scheme}***@{tail}"  # no user:password split: the whole user part may be a token
    return f"{scheme}{user}:***@{tail}"
