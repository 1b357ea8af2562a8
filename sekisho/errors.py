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


class CodeMistyped(FactorError):
    """A recovery or extension code with a mistyped group: caught before it counts."""

    advice = "Check the digits with the helpdesk and type the code again."

    def __init__(self, message: str, *, group: int | None) -> None:
        super().__init__(message)
        self.group = group


class LockedOut(FactorError):
    """Too many failures in a row: wait ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, advice=f"Wait {retry_after} seconds, then try again.")
        self.retry_after = retry_after


class LeaseExpired(FactorError):
    """The laptop's offline period is over: only a check-in or an extension code renews it."""

    advice = ("Bring the laptop to the office for check-in, or call the helpdesk for an extension code "
              "(sekisho-agent extend).")


# --- devices (security keys, cards) ---------------------------------------------


class DeviceError(FactorError):
    """A security key or card failed, vanished or answered something unreadable.

    ``status`` is the device's own status code (CTAP2 error or ISO 7816 status word)
    where there was one.
    """

    advice = "Remove the key or card, insert it again and retry. If it keeps failing, call the helpdesk."

    def __init__(self, message: str, *, status: int | None = None, advice: str | None = None) -> None:
        super().__init__(message, advice=advice)
        self.status = status


class KeyNotFound(FactorError):
    """None of the connected security keys holds the user's credential."""

    advice = "Insert your own security key (the one registered for your staff id) and try again."


class KeyPinInvalid(AuthenticationFailed):
    """The key or card refused its PIN; it counts the failure itself."""

    advice = "Check the PIN of your key and try again."

    def __init__(self, message: str, *, attempts_remaining: int | None) -> None:
        super().__init__(message)
        self.attempts_remaining = attempts_remaining


class KeyPinBlocked(FactorError):
    """The key's or card's PIN is blocked after too many wrong PINs."""

    advice = "Call the helpdesk: the key must be reset and registered again at the office."


class AttestationRejected(FactorError):
    """At enrolment: the key could not prove what it is, or the policy does not allow it."""

    advice = "Use a security key model IT has approved."


class KeyUnsuitable(FactorError):
    """The key cannot hold the slot kind asked for (no hmac-secret, alwaysUv, no PIN)."""


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
