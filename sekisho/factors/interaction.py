"""How factors talk to the person in front of the laptop.

One interface, three implementations: the tray's windows, the terminal, and the
scripted answers tests and the demo use. Factors never read a terminal or open a
window themselves (as python-fido2's client takes a ``UserInteraction``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from sekisho.errors import Cancelled


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """What is being asked, for whom; the UI words it in the user's language."""

    user_id: str
    attempts_remaining: int | None = None


class UserInteraction:
    """Override what your UI can ask; anything else cancels the logon."""

    #: Set by the UI to cancel while a key waits for a touch or a finger (passed to the key).
    cancel_event: threading.Event | None = None
    #: Seconds to wait for the person to insert their key or card when none is there
    #: (0: say so at once). A logon window waits; scripts and tests do not.
    device_wait: float = 0.0

    def request_passphrase(self, prompt: Prompt) -> str:
        raise Cancelled("No way to ask for a passphrase here.")

    def request_code(self, prompt: Prompt) -> str:
        """A one-time code (TOTP) from an app or a hardware token."""
        raise Cancelled("No way to ask for a one-time code here.")

    def request_pin(self, prompt: Prompt) -> str:
        """The PIN of a security key or card, checked by the device itself."""
        raise Cancelled("No way to ask for a PIN here.")

    def prompt_touch(self, prompt: Prompt) -> None:
        """Tell the user to touch their security key."""

    def prompt_fingerprint(self, prompt: Prompt) -> None:
        """Tell the user to place their finger on the key's sensor."""

    def prompt_insert(self, prompt: Prompt) -> None:
        """Tell the user to insert their security key or card (none of theirs is there)."""


class ScriptedInteraction(UserInteraction):
    """Answers from a script, in order: for tests, the demo and piped terminal input.

    ``answers`` maps a request kind (``passphrase``, ``code``, ``pin``) to the answers
    to give, one per request. Running out cancels, as a person closing the window would.
    """

    def __init__(self, **answers: Iterable[str] | str) -> None:
        self._answers = {k: [v] if isinstance(v, str) else list(v) for k, v in answers.items()}
        self.prompts: list[str] = []

    def __repr__(self) -> str:  # never the answers
        return f"<ScriptedInteraction asks={sorted(self._answers)}>"

    def _next(self, kind: str) -> str:
        self.prompts.append(kind)
        queue = self._answers.get(kind, [])
        if not queue:
            raise Cancelled(f"No {kind} was given.")
        return queue.pop(0)

    def request_passphrase(self, prompt: Prompt) -> str:
        return self._next("passphrase")

    def request_code(self, prompt: Prompt) -> str:
        return self._next("code")

    def request_pin(self, prompt: Prompt) -> str:
        return self._next("pin")

    def prompt_touch(self, prompt: Prompt) -> None:
        self.prompts.append("touch")

    def prompt_fingerprint(self, prompt: Prompt) -> None:
        self.prompts.append("fingerprint")
