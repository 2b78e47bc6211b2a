"""The one base class of every mistake a user can fix.

It lives in the bottom layer (``zoo``) so that policies, backends and the harness can all derive from it; the
CLI catches ``UserError`` once and prints its message as one plain line (exit 2). Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible combination; the message is one line that names the fix."""
