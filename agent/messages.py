"""What a field worker reads during a logon, shared by the logon window and the terminal
client: the prompts, the notices, the progress steps and each refusal as what happened and
what to do — in the UI's language (agent/i18n.py)."""

from __future__ import annotations

from typing import Any

from agent.i18n import N_, Translator

#: The usual bring-up time to show against the elapsed one (the report: 1:03 to 1:50).
USUAL_CONNECT = "1〜2"

PROMPTS = {
    "passphrase": N_("Enter your passphrase."),
    "pin": N_("Enter the PIN of your security key or card."),
    "code": N_("Enter the one-time code from your app or token."),
}
NOTICES = {
    "touch": N_("Touch your security key."),
    "fingerprint": N_("Place your finger on the key's sensor."),
    "insert": N_("Insert your security key or card."),
}
STEPS = {
    "verifying": N_("Checking your factors…"),
    "isolate": N_("Taking other networks down…"),
    "isolated": N_("Other networks are down."),
    "modem": N_("Looking for the closed-network SIM…"),
    "connecting": N_("Connecting to the closed network… {elapsed} s (usually {usual} minutes)"),
    "probing": N_("Checking that the office can be reached…"),
    "unlocked": N_("Unlocked."),
}
#: What went wrong and what to do, per error the service names (others: its own words).
ERRORS = {
    "AuthenticationFailed": (N_("That did not match."), N_("Check what you typed and try again.")),
    "UserNotFound": (N_("This staff id is not registered on this laptop."),
                     N_("Check your staff id (職員番号). If it is right, call the helpdesk.")),
    "LockedOut": (N_("Too many attempts: logon is paused."), N_("Wait and try again.")),
    "UserDisabled": (N_("You are disabled on this laptop."), N_("Call the helpdesk.")),
    "Cancelled": (N_("Logon cancelled."), ""),
    "LeaseExpired": (N_("The offline period of this laptop is over."),
                     N_("Bring the laptop to the office, or ask the helpdesk for an extension code.")),
    "KeyNotFound": (N_("Your security key or card was not found."),
                    N_("Insert your own key or card and try again.")),
    "KeyPinInvalid": (N_("The PIN is wrong."), N_("Check the PIN and try again.")),
    "KeyPinBlocked": (N_("The PIN is blocked."), N_("Call the helpdesk.")),
    "DeviceError": (N_("The key or card did not answer properly."),
                    N_("Remove it, insert it again and retry. If it keeps failing, call the helpdesk.")),
    "NetworkError": (N_("The closed network could not be brought up."),
                     N_("Move to a place with better signal, check the SIM dongle, and try again.")),
    "GateBusy": (N_("The laptop is busy or already unlocked."), N_("Wait a moment and try again.")),
    "CodeMistyped": (N_("A group of the code is mistyped."), N_("Check each group and type it again.")),
}
GENERIC_ERROR = N_("Logon did not succeed.")

def error_text(tr: Translator, message: dict[str, Any]) -> tuple[str, str]:
    """The headline and the advice for an error message from the service, in the UI's language."""
    name = str(message.get("error", ""))
    if name in ERRORS:
        head, advice = ERRORS[name]
        head, advice = tr(head), tr(advice) if advice else ""
    else:
        head, advice = tr(GENERIC_ERROR), str(message.get("message", ""))
    if name == "LockedOut" and message.get("retry_after"):
        head += " " + tr("({seconds} s left)", seconds=message["retry_after"])
    left = message.get("attempts_before_delay")
    if left is not None and name == "AuthenticationFailed":
        advice += " " + tr("Attempts remaining before a pause: {left}.", left=left)
    return head, advice.strip()


