"""The logon window (Tk): staff id, the prompts the service relays, progress, plain errors.

A client of the control channel like ``sekisho-agent``: it holds no logic of its own.
The conversation with the service runs in a worker thread; everything it wants shown
goes through a queue that the Tk thread drains, and a prompt waits for the person's
answer (or Esc). Keyboard only works: Tab, Enter, Esc. It fits 1366x768 with room to
spare and uses large text (a small laptop screen at a counter, the report's §4(5)).

The staff id is typed, never picked from a list: a pool laptop must not show a city's
staff to whoever holds it.
"""

from __future__ import annotations

import queue
import threading
import time
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from agent.i18n import N_, Translator
from agent.messages import NOTICES, PROMPTS, STEPS, USUAL_CONNECT, error_text

#: The control channel's client (agent.cli.converse).
Converse = Callable[..., dict[str, Any]]


class LogonWindow:
    """One logon (or recovery) in a Tk window; ``result`` holds the final message."""

    def __init__(self, root: tk.Tk, socket_path: Path, tr: Translator, *, converse: Converse,
                 on_done: Callable[[dict[str, Any]], None] | None = None, mode: str = "unlock",
                 status: dict[str, Any] | None = None) -> None:
        """``status``: the service's status reply if the caller has just asked for it."""
        self.root, self.path, self.tr, self.mode = root, socket_path, tr, mode
        self._status = status
        self._converse = converse
        self.on_done = on_done
        self.result: dict[str, Any] | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancel = threading.Event()
        self._answer: queue.Queue[str | None] = queue.Queue()
        self._started = 0.0
        self._build()
        self.root.after(50, self._drain)

    # --- layout ---------------------------------------------------------------------------

    def _build(self) -> None:
        tr = self.tr
        self.root.title(tr({"unlock": N_("Sekisho — log on"), "recover": N_("Sekisho — recovery code"),
                            "extend": N_("Sekisho — lease extension")}[self.mode]))
        base = tkfont.nametofont("TkDefaultFont")
        base.configure(size=13)
        big = base.copy()
        big.configure(size=16, weight="bold")
        self._fonts = (base, big)  # Tk fonts are freed with the window, in the Tk thread
        frame = ttk.Frame(self.root, padding=24)
        frame.grid(sticky="nsew")
        self.frame = frame
        self.headline = ttk.Label(frame, text=tr(self._first_line()), font=big, wraplength=560)
        self.headline.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 16))
        self.user_label = ttk.Label(frame, text=tr("Staff id"))
        recent = self._recent_users()
        # Typed, or (where the policy allows it) picked from this laptop's latest users.
        self.user = ttk.Combobox(frame, width=22, values=recent) if recent else ttk.Entry(frame, width=24)
        if self.mode != "extend":
            self.user_label.grid(row=1, column=0, sticky="w", padx=(0, 12))
            self.user.grid(row=1, column=1, sticky="we")
        # Recovery and extension: the code in groups, checked group by group as it is typed.
        self.code_label = ttk.Label(frame, text=tr(N_("Recovery code") if self.mode == "recover"
                                                   else N_("Extension code")))
        self.code = ttk.Entry(frame, width=58 if self.mode == "recover" else 38)
        self.key_ids = ttk.Label(frame, text="", wraplength=560)
        if self.mode != "unlock":
            self.code_label.grid(row=3, column=0, sticky="w", padx=(0, 12), pady=(8, 0))
            self.code.grid(row=3, column=1, sticky="we", pady=(8, 0))
            self.code.bind("<KeyRelease>", lambda e: self.check_code())
        if self.mode == "recover":
            self.key_ids.grid(row=4, column=0, columnspan=2, sticky="w", pady=(8, 0))
            self.user.bind("<FocusOut>", lambda e: self.show_key_ids())
        self.secret_label = ttk.Label(frame, text="")
        self.secret = ttk.Entry(frame, width=24, show="•")
        self.progress = ttk.Label(frame, text="", wraplength=560)
        self.progress.grid(row=5, column=0, columnspan=2, sticky="w", pady=(12, 0))
        self.error = ttk.Label(frame, text="", foreground="#b00020", wraplength=560)
        self.error.grid(row=6, column=0, columnspan=2, sticky="w", pady=(8, 0))
        self.advice = ttk.Label(frame, text="", wraplength=560)
        self.advice.grid(row=7, column=0, columnspan=2, sticky="w")
        buttons = ttk.Frame(frame)
        buttons.grid(row=8, column=0, columnspan=2, sticky="e", pady=(20, 0))
        self.ok = ttk.Button(buttons, text=tr(N_("Log on") if self.mode != "extend" else N_("Extend")),
                             command=self.submit)
        self.ok.grid(row=0, column=0, padx=(0, 8))
        self.cancel_button = ttk.Button(buttons, text=tr("Cancel"), command=self.cancel)
        self.cancel_button.grid(row=0, column=1)
        # Keys enrolled to identify by touch: no id to type (the service finds the user).
        self.touch_button = ttk.Button(buttons, text=tr("Touch your key instead"), command=self.identify)
        if self.mode == "unlock":
            self.touch_button.grid(row=0, column=2, padx=(8, 0))
        self.root.bind("<Return>", lambda e: self.submit())
        self.root.bind("<Escape>", lambda e: self.cancel())
        (self.code if self.mode == "extend" else self.user).focus_set()
        self._waiting = False
        self._busy = False

    # --- actions --------------------------------------------------------------------------

    def submit(self) -> None:
        """Enter / the button: start the logon, or answer the prompt shown."""
        if self._waiting:
            value = self.secret.get()
            self.secret.delete(0, "end")
            self._hide_secret()
            self._answer.put(value)
            return
        if self._busy:
            return
        user = self.user.get().strip()
        if not user and self.mode != "extend":
            self._show_error(self.tr("Enter your staff id to log on."), "")
            return
        request: dict[str, Any] = {"op": self.mode, "user": user, "wait": True}
        if self.mode != "unlock":
            if self.root.focus_get() is self.user:  # Enter in the staff id: on to the code
                self.show_key_ids()
                self.code.focus_set()
                return
            if not self.check_code(final=True):
                return
            request["code"] = self.code.get()
        if self.mode == "extend":
            request.pop("user")
        self._busy = True
        self._clear_error()
        self.user.state(["disabled"])
        self._started = time.monotonic()
        threading.Thread(target=self._run, args=(request,), daemon=True).start()

    def identify(self) -> None:
        """Log on with a touch that names the user (a key enrolled to identify by touch)."""
        if self._busy or self._waiting:
            return
        self._busy = True
        self._clear_error()
        self.user.state(["disabled"])
        self._started = time.monotonic()
        threading.Thread(target=self._run, args=({"op": "unlock", "user": "", "identify": True, "wait": True},),
                         daemon=True).start()

    def _recent_users(self) -> list[str]:
        try:
            reply = self._status or self._converse(self.path, {"op": "status"}, quiet=True)
        except Exception:  # no service yet: the logon will say so
            return []
        ids = (reply.get("status") or {}).get("recent_users") or []
        return [str(i) for i in ids]

    def _first_line(self) -> str:
        return {"unlock": N_("Enter your staff id to log on."),
                "recover": N_("Enter your staff id and the recovery code the helpdesk reads to you."),
                "extend": N_("Enter the extension code the helpdesk reads to you.")}[self.mode]

    def check_code(self, *, final: bool = False) -> bool:
        """Flag a mistyped group as soon as it is complete (``final``: the whole code must be
        there and right); True when nothing is flagged."""
        # Loaded on first use: the cryptography behind the codes is not needed to draw the window.
        from sekisho.codes import mistyped_group, parse_extension_code, parse_recovery_code
        from sekisho.errors import CodeMistyped

        text = self.code.get()
        group = mistyped_group(text)
        if group is None and final:
            try:
                (parse_recovery_code if self.mode == "recover" else parse_extension_code)(text)
            except CodeMistyped as exc:
                group = exc.group
                if group is None:
                    self._show_error(self.tr("The code is not complete."),
                                     self.tr("Check each group and type it again."))
                    return False
        if group is not None:
            self._show_error(self.tr("Group {group} of the code is mistyped.", group=group),
                             self.tr("Check each group and type it again."))
            return False
        self._clear_error()
        return True

    def show_key_ids(self) -> None:
        """The key ids of the user's unused recovery codes: read to the helpdesk to find the code."""
        user = self.user.get().strip()
        if not user:
            return
        try:
            reply = self._converse(self.path, {"op": "key-ids", "user": user}, quiet=True)
        except Exception:  # no service: the logon itself will say so
            return
        ids = reply.get("key_ids") if reply.get("type") == "result" else None
        if ids:
            self.key_ids.configure(text=self.tr("Key ids to read to the helpdesk: {ids}", ids="  ".join(ids)))

    def cancel(self) -> None:
        """Esc / Cancel: refuse the prompt shown, stop a key waiting for a touch (the service
        cancels the logon either way), or close the window."""
        if self._waiting:
            self._hide_secret()
            self._answer.put(None)
        elif self._busy:
            self._cancel.set()
            self.progress.configure(text=self.tr("Cancelling…"))
        else:
            self.root.destroy()

    # --- the worker thread -------------------------------------------------------------------

    def _run(self, request: dict[str, Any]) -> None:
        self._cancel = cancel = threading.Event()
        def answer(kind: str, user: str | None, left: int | None) -> str | None:
            self._events.put(("prompt", (kind, left)))
            return self._answer.get()

        try:
            result = self._converse(self.path, request, quiet=True, answer=answer,
                                    progress=lambda step, details: self._events.put(("progress", (step, details))),
                                    notice=lambda kind: self._events.put(("notice", kind)), cancel=cancel)
        except Exception as exc:  # the service is not there: said plainly, not a traceback
            result = {"type": "error", "error": "Unavailable", "message": str(exc)}
        self._events.put(("done", result))

    # --- the Tk thread -----------------------------------------------------------------------

    def _drain(self) -> None:
        try:
            while True:
                kind, value = self._events.get_nowait()
                getattr(self, f"_on_{kind}")(value)
        except queue.Empty:
            pass
        if self.root.winfo_exists():
            self.root.after(50, self._drain)

    def _on_prompt(self, value: tuple[str, int | None]) -> None:
        kind, left = value
        self.headline.configure(text=self.tr(PROMPTS.get(kind, PROMPTS["passphrase"])))
        label = {"passphrase": N_("Passphrase"), "pin": N_("PIN"), "code": N_("One-time code")}.get(
            kind, N_("Passphrase"))
        self.secret_label.configure(text=self.tr(label))
        self.secret.configure(show="" if kind == "code" else "•")
        self.secret_label.grid(row=2, column=0, sticky="w", padx=(0, 12), pady=(8, 0))
        self.secret.grid(row=2, column=1, sticky="we", pady=(8, 0))
        self.secret.focus_set()
        if left is not None:
            self.advice.configure(text=self.tr("Attempts remaining: {left}", left=left))
        self._waiting = True

    def _hide_secret(self) -> None:
        self._waiting = False
        self.secret_label.grid_remove()
        self.secret.grid_remove()

    def _on_notice(self, kind: str) -> None:
        self.headline.configure(text=self.tr(NOTICES.get(kind, NOTICES["touch"])))
        self.progress.configure(text=self.tr("Waiting for your key… (Esc cancels)"))

    def _on_progress(self, value: tuple[str, dict[str, Any]]) -> None:
        step, details = value
        text = STEPS.get(step)
        if text is None:
            return
        if step == "connecting":
            elapsed = details.get("elapsed_s", round(time.monotonic() - self._started))
            self.progress.configure(text=self.tr(text, elapsed=elapsed, usual=USUAL_CONNECT))
        else:
            self.progress.configure(text=self.tr(text))
        self.headline.configure(text=self.tr("Please wait."))

    def _on_done(self, result: dict[str, Any]) -> None:
        self._busy = False
        self._hide_secret()
        self.result = result
        self.user.state(["!disabled"])
        if result.get("type") == "error":
            head, advice = error_text(self.tr, result)
            self._show_error(head, advice)
            self.headline.configure(text=self.tr(self._first_line()))
            self.progress.configure(text="")
        elif self.mode == "extend":
            lease = (result.get("status") or {}).get("lease") or {}
            self.headline.configure(text=self.tr("The offline period is extended."))
            self.progress.configure(text=self.tr("Offline period: {days} days left", days=lease.get("days_left", "?")))
        else:
            user = (result.get("status") or {}).get("user") or {}
            self.headline.configure(text=self.tr("Unlocked: {name}", name=user.get("name", "")))
            self.progress.configure(text=self.tr("Your apps are starting. Lock from the tray icon when you leave."))
        if result.get("type") == "result":  # done: nothing more to type here
            self.user.state(["disabled"])
            self.code.state(["disabled"])
            self.ok.grid_remove()
            self.touch_button.grid_remove()
            self.cancel_button.configure(text=self.tr("Close"))
        if self.on_done is not None:
            self.on_done(result)

    def _show_error(self, head: str, advice: str) -> None:
        self.error.configure(text=head)
        self.advice.configure(text=advice)

    def _clear_error(self) -> None:
        self.error.configure(text="")
        self.advice.configure(text="")


class StatusWindow:
    """The tray's "Status": who is unlocked since when, the link, the offline period."""

    def __init__(self, root: tk.Tk, lines: list[str], tr: Translator) -> None:
        root.title(tr("Sekisho — status"))
        base = tkfont.nametofont("TkDefaultFont")
        base.configure(size=13)
        self._fonts = (base,)
        frame = ttk.Frame(root, padding=24)
        frame.grid(sticky="nsew")
        self.labels = [ttk.Label(frame, text=line, wraplength=560) for line in lines]
        for row, label in enumerate(self.labels):
            label.grid(row=row, column=0, sticky="w", pady=(0, 6))
        self.close = ttk.Button(frame, text=tr("Close"), command=root.destroy)
        self.close.grid(row=len(lines), column=0, sticky="e", pady=(16, 0))
        root.bind("<Return>", lambda e: root.destroy())
        root.bind("<Escape>", lambda e: root.destroy())
        self.close.focus_set()


def ask_quit(root: tk.Tk, tr: Translator) -> bool:
    """The tray's "Quit" asks first: quitting locks the laptop and closes the apps."""
    from tkinter import messagebox

    root.withdraw()
    return bool(messagebox.askyesno(tr("Quit Sekisho"),
                                    tr("Quit Sekisho? The laptop will be locked and your apps closed."),
                                    parent=root))
