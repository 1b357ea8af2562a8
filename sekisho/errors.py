"""One exception tree for Sekisho.

Every error a person can meet carries a message fit to show them (``str(error)``)
and, where there is one, the next step (``error.advice``). Data a program needs
(attempts remaining, the failing rule, the status word) rides on attributes.
No exception ever carries a secret: messages name what failed, never its value.
"""

from __future__ import annotations


class SekishoError(Exception):
    """Base of every error Sekisho raises on purpose."""

    advice: str = ""

    def __init__(self, message: str, *, advice: str | None = None) -> None:
        super().__init__(message)
        if advice is not None:
            self.advice = advice

    def diagnostics(self) -> str:
        """The message and, where known, what to do next."""
        text = str(self)
        return f"{text}\n{self.advice}" if self.advice else text


# --- the store ---------------------------------------------------------------


class StoreError(SekishoError):
    """Something is wrong with the credential store."""


class StoreNotFound(StoreError):
    advice = "Provision this laptop first, or check the configured store path."


class StoreCorrupt(StoreError):
    """The file is not a readable Sekisho store (truncated, overwritten, not SQLite)."""

    advice = (
        "Do not delete the file: keep it for IT. Restore the store from the office "
        "(check-in) or re-provision the laptop."
    )


class StoreFormatTooNew(StoreError):
    advice = "Update Sekisho on this laptop to a version that knows this store format."


class WrongDeviceKey(StoreError):
    """The device key does not belong to this store."""

    advice = (
        "The device key held by the key source is not the one this store was made "
        "with. Check which key source is configured; do not create a new key."
    )


class IntegrityError(StoreError):
    """An encrypted record failed authentication: it was changed, moved or damaged."""

    advice = "The store may have been tampered with. Keep the laptop as it is and call IT."


class UserNotFound(StoreError):
    """No such user in this store (the message never lists the users that exist)."""

    advice = "Check the staff id. If it is right, this laptop was not provisioned for you."


class UserExists(StoreError):
    pass


class KeySourceError(SekishoError):
    """The device key could not be read or created."""


class KeySourceUnavailable(KeySourceError):
    pass


class InsecureKeySource(KeySourceError):
    pass


# --- factors and slots ---------------------------------------------------------


class FactorError(SekishoError):
    """A factor was refused or could not be used."""


class AuthenticationFailed(FactorError):
    """The factors presented did not open the slot.

    Deliberately says nothing about which factor was wrong.
    """

    advice = "Check your passphrase and code and try again."


class Cancelled(FactorError):
    advice = ""


class SlotKindNotPermitted(FactorError):
    advice = "IT's policy does not allow this kind of slot on this laptop."


class NoUsableSlot(FactorError):
    advice = "None of your enrolled factors is permitted here. Call the helpdesk."


class PassphraseRejected(FactorError):
    """A passphrase broke one of the enrolment rules."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message, advice="Choose another passphrase.")
        self.rule = rule


class TotpSeedRejected(FactorError):
    pass


# --- grants and policy ---------------------------------------------------------


class GrantError(SekishoError):
    """A grant could not be opened or was refused."""

    advice = "Ask IT to provision this laptop for you again."


class SignatureInvalid(SekishoError):
    """A signature did not verify against the pinned key."""


class PolicyError(SekishoError):
    """The policy is malformed, unsigned or signed by the wrong key."""

    advice = "Ask IT for a correctly signed policy; the laptop keeps its current one."


class FormatError(SekishoError):
    """Data did not have the shape its format requires."""


class UserDisabled(FactorError):
    """The user is disabled on this laptop."""

    advice = "Call the helpdesk: this staff id is disabled on this laptop."


# --- the logon trail -----------------------------------------------------------


class TrailError(SekishoError):
    """The logon trail cannot be opened, read or written."""


class TrailInvalid(TrailError):
    """Verification found a bad entry: ``reason`` says why, ``seq`` and ``line`` where."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        seq: int | None = None,
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq
        self.line = line
        self.source = source
