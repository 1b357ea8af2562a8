"""``sekisho-agent``: the laptop service and its terminal clients.

    sekisho-agent run [--state-dir DIR] [--socket PATH]
    sekisho-agent unlock [--user ID] | lock | status [--json] | recover --user ID | extend
    sekisho-agent device init --it-key IT.pem | install BUNDLE | checkin-request -o FILE

The clients ask for secrets with getpass on a terminal, or read them one per line from
standard input when it is not one (scripts). Exit codes: 0 done; 1 refused (wrong
factors, locked out, lease expired, not allowed); 2 could not run (no service, usage).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from agent import protocol
from agent.i18n import Translator, choose_language
from agent.messages import NOTICES, STEPS, USUAL_CONNECT, error_text
from sekisho.errors import FormatError, SekishoError

if TYPE_CHECKING:
    from sekisho.store.keysource import DeviceKeySource

DEFAULT_SOCKET = Path("/run/sekisho/agent.sock")
DEFAULT_STATE = Path("/var/lib/sekisho")
log = logging.getLogger(__name__)
EXIT_REFUSED = 1
EXIT_UNUSABLE = 2


class _Fail(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


#: The field worker's language for this run (the group's ``--lang``, else the desktop's).
_translator = Translator("en")


def tr(message: str, **values: object) -> str:
    """``message`` in this run's language (every string a field worker reads goes through here)."""
    return _translator(message, **values)


def socket_path(option: Path | None) -> Path:
    return option or Path(os.environ.get("SEKISHO_SOCKET", DEFAULT_SOCKET))


def _answer(kind: str, user: str | None, attempts: int | None) -> str | None:
    """A secret from the person (getpass) or the next line of piped input; None: cancel."""
    label = {"passphrase": tr("Passphrase"), "pin": tr("PIN"), "code": tr("One-time code")}.get(kind, kind)
    if attempts is not None:
        label += " (" + tr("Attempts remaining: {left}", left=attempts) + ")"
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"{label}: ")
        except (EOFError, KeyboardInterrupt):
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


Answerer = Callable[[str, str | None, int | None], str | None]


def describe_progress(step: str, details: Mapping[str, Any]) -> str:
    """One line for a progress step of an unlock (the service's ``progress`` messages)."""
    if step not in STEPS:
        return f"{step}…"
    if step == "connecting":
        return tr(STEPS[step], elapsed=details.get("elapsed_s", 0), usual=USUAL_CONNECT)
    return tr(STEPS[step])


def converse(path: Path, request: dict[str, Any], *, quiet: bool = False, answer: Answerer | None = None,
             progress: Callable[[str, dict[str, Any]], None] | None = None,
             notice: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    """Send one request, answer the service's prompts (``answer``: kind, user, attempts
    remaining → the answer or None to cancel; by default the terminal), return its final
    message. ``cancel``: set it to cancel while a key waits for a touch."""
    answer = answer or _answer
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise _Fail(tr("The Sekisho service is not reachable at {path} ({why}).", path=path, why=exc.strerror),
                    EXIT_UNUSABLE) from None
    with sock:
        protocol.send(sock, {"v": protocol.VERSION, **request})
        finished = threading.Event()
        if cancel is not None:  # the person cancels while a key waits for a touch: say so to the service
            def send_cancel() -> None:
                while not finished.is_set():
                    if cancel.wait(0.1):
                        with contextlib.suppress(OSError):
                            protocol.send(sock, {"type": "cancel"})
                        return

            threading.Thread(target=send_cancel, daemon=True).start()
        try:
            return _converse_loop(sock, answer, quiet, progress, notice)
        finally:
            finished.set()


def _converse_loop(sock: socket.socket, answer: Answerer, quiet: bool,
                   progress: Callable[[str, dict[str, Any]], None] | None,
                   notice: Callable[[str], None] | None) -> dict[str, Any]:
    while True:
        try:
            message = protocol.receive(sock)
        except (protocol.ChannelClosed, OSError, FormatError):
            raise _Fail(tr("The service closed the connection without an answer."), EXIT_UNUSABLE) from None
        kind = message.get("type")
        if kind in ("result", "error"):
            return message
        if kind == "prompt":
            value = answer(str(message.get("kind")), message.get("user"), message.get("attempts_remaining"))
            protocol.send(sock, {"type": "cancel"} if value is None else {"type": "answer", "value": value})
        elif kind == "notice" and notice is not None:
            notice(str(message.get("kind")))
        elif kind == "notice" and not quiet:
            click.echo(tr(NOTICES.get(str(message.get("kind")), NOTICES["touch"])), err=True)
        elif kind == "progress":
            if progress is not None:
                progress(str(message.get("step")), dict(message.get("details") or {}))
            elif not quiet:
                click.echo(f"  {describe_progress(str(message.get('step')), message.get('details') or {})}",
                           err=True)




def _outcome(message: dict[str, Any]) -> dict[str, Any]:
    if message["type"] == "error":
        head, advice = error_text(_translator, message)
        if _translator.lang == "en" and message.get("message"):
            head = str(message["message"])  # English: the service's own words, which say more
            if message.get("attempts_before_delay") is not None and message.get("error") == "AuthenticationFailed":
                head += " (" + tr("Attempts remaining before a pause: {left}.",
                                  left=message["attempts_before_delay"]).rstrip(".") + ")"
            advice = str(message.get("advice") or "")
        raise _Fail(head + (f"\n{advice}" if advice else ""), EXIT_REFUSED)
    return message


@click.group()
@click.option("--socket", "sock", type=click.Path(path_type=Path), help="The service's control socket.")
@click.option("--debug", is_flag=True, help="Tracebacks for unexpected errors, debug logs.")
@click.option("--lang", "ui_lang", help="ja or en for what a field worker reads (default: the desktop's language).")
@click.version_option(package_name="sekisho")
@click.pass_context
def cli(ctx: click.Context, sock: Path | None, debug: bool, ui_lang: str | None) -> None:
    """Sekisho's laptop agent: the service, and unlock / lock / status."""
    global _translator
    path = socket_path(sock)
    # The policy's language (IT's choice) where --lang and SEKISHO_LANG say nothing, for the
    # commands a field worker runs; the desktop's language otherwise.
    # The reply is kept for the command, which then need not ask again.
    status = _first_status(path) if not ui_lang and ctx.invoked_subcommand in FIELD_COMMANDS else None
    policy_lang = (status or {}).get("status", {}).get("language")
    _translator = Translator(_language(ui_lang, policy_lang if policy_lang in ("ja", "en") else None))
    ctx.obj = {"socket": path, "debug": debug, "status": status}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE, show_default=True)
@click.option("--key-file", type=click.Path(path_type=Path), help="A root-only device key file (else the keyring).")
@click.option("--insecure-key-file", type=click.Path(path_type=Path), hidden=True,
              help="A plain device key file: tests and the demo only.")
@click.option("--soft-key", "soft_keys", multiple=True, type=click.Path(path_type=Path),
              help="A software security key file (only if the policy allows software authenticators).")
@click.pass_context
def run(ctx: click.Context, state_dir: Path, key_file: Path | None, insecure_key_file: Path | None,
        soft_keys: tuple[Path, ...]) -> None:
    """Run the service (as root under systemd; see packaging/)."""
    source = _key_source(key_file, insecure_key_file)
    devices = None
    if soft_keys:
        from sekisho.devices.softkey import SoftKey

        keys = [SoftKey.load(p) for p in soft_keys]
        devices = lambda: keys  # noqa: E731
    try:
        from agent.service import Service  # the service's modules load only where it runs

        service = Service.open(state_dir, source, devices=devices)
    except SekishoError as exc:  # the service cannot start: a setup problem, not a refusal
        raise _Fail(exc.diagnostics(), EXIT_UNUSABLE) from None
    path = ctx.obj["socket"]
    path.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # systemd's stop: leave serve() through its finally
    click.echo(f"Sekisho service: state in {state_dir}, control socket {path}", err=True)
    service.start_watching()
    try:
        service.serve(path)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        service.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.option("--user", "user", help="Your staff id (職員番号); asked if not given.")
@click.option("--launch", is_flag=True, help="Start the permitted apps (Citrix) and close them at lock.")
@click.pass_context
def unlock(ctx: click.Context, user: str | None, launch: bool) -> None:
    """Log on: the factors your slots need, then the closed network."""
    if not user:
        user = click.prompt(tr("Staff id"), err=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    result = _outcome(converse(ctx.obj["socket"], {"op": "unlock", "user": user}))
    session = result["status"].get("user") or {}
    click.echo(tr("Unlocked: {name}", name=session.get("name", user)) + " " +
               tr("Apps: {apps}", apps=", ".join(session.get("apps", [])) or "-"))
    if launch:
        _launch_until_locked(ctx.obj["socket"], session)


def _launch_until_locked(path: Path, session: dict[str, Any]) -> None:
    """Start the session's apps here (the user's session), and close them when it locks."""
    from agent.launch import launcher_for

    launcher = launcher_for(session)
    launched = launcher.start(session.get("citrix", {}), session.get("apps", []))
    client = launcher.client
    converse(path, {"op": "apps", "event": "started", "client": client, "apps": [a.app for a in launched]},
             quiet=True)
    click.echo(tr("Apps started; they close when the laptop locks (Ctrl+C locks now)."), err=True)
    link = "up"
    try:
        while True:
            status = converse(path, {"op": "status"}, quiet=True).get("status", {})
            if status.get("state") != "unlocked":
                break
            now = ((status.get("user") or {}).get("link") or {}).get("state", "up")
            if now != link:
                click.echo(tr("The closed-network link dropped; reconnecting…") if now == "reconnecting"
                           else tr("The closed-network link is back."), err=True)
                link = now
            time.sleep(2)
    except KeyboardInterrupt:
        converse(path, {"op": "lock"}, quiet=True)
    finally:
        closing = launcher.close()
        converse(path, {"op": "apps", "event": "closed", "client": client, **closing.to_json()}, quiet=True)
        click.echo(tr("Locked: {closed} apps closed, {killed} had to be stopped.", closed=closing.closed,
                      killed=closing.killed), err=True)


@cli.command()
@click.option("--lang", help="ja or en (default: the desktop's language).")
@click.option("--mode", type=click.Choice(["unlock", "recover", "extend", "status", "quit"]), default="unlock",
              show_default=True)
@click.option("--ready-exit", is_flag=True, hidden=True, help="Exit once the window is drawn (bench/agent.py).")
@click.pass_context
def window(ctx: click.Context, lang: str | None, mode: str, ready_exit: bool) -> None:
    """The logon window (Tk) for this desktop session."""
    import tkinter as tk

    from agent.window import LogonWindow, StatusWindow, ask_quit

    ui = Translator(_language(lang)) if lang else _translator
    try:
        root = tk.Tk()
    except tk.TclError as exc:
        raise _Fail(f"No display for the logon window ({exc}).", EXIT_UNUSABLE) from None
    if mode == "quit":  # the tray's question; the exit code is the answer
        yes = ask_quit(root, ui)
        root.destroy()
        ctx.exit(0 if yes else EXIT_REFUSED)
    if mode == "status":
        from agent.tray import status_lines

        reply = _status_reply(ctx)
        StatusWindow(root, status_lines(ui, reply.get("status") if reply.get("type") == "result" else None), ui)
        if not ready_exit:
            root.mainloop()
        return

    def done(result: dict[str, Any]) -> None:
        if result.get("type") == "result":  # unlocked: the tray takes over after a moment
            root.after(4000, root.destroy)

    LogonWindow(root, ctx.obj["socket"], ui, converse=converse, mode=mode, on_done=done, status=ctx.obj["status"])
    if ready_exit:
        root.update()
        root.destroy()
        return
    root.mainloop()


@cli.command()
@click.option("--lang", help="ja or en (default: the desktop's language).")
@click.pass_context
def tray(ctx: click.Context, lang: str | None) -> None:
    """The tray icon for this desktop session (runs until Quit)."""
    from agent.tray import TrayApp, ask_quit, open_window, run_tray

    language = _language(lang) if lang else _translator.lang
    path = ctx.obj["socket"]
    app = TrayApp(path, Translator(language), converse=converse,
                  open_window=lambda mode: open_window(path, language, mode),
                  confirm_quit=lambda: ask_quit(path, language))
    run_tray(app)


def _language(lang: str | None, policy: str | None = None) -> str:
    try:
        return choose_language(lang, policy)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lang") from None


#: The commands a field worker runs: they speak the policy's language where IT set one.
FIELD_COMMANDS = frozenset({"unlock", "lock", "status", "recover", "extend", "window", "tray"})


def _first_status(path: Path) -> dict[str, Any] | None:
    """The service's status reply as a field worker's command starts, or None (no service yet)."""
    try:
        reply = converse(path, {"op": "status"}, quiet=True)
    except (_Fail, OSError, ValueError):
        return None
    return reply if reply.get("type") == "result" and isinstance(reply.get("status"), dict) else None


def _status_reply(ctx: click.Context) -> dict[str, Any]:
    """The status reply: the one asked for as the command started, else asked now."""
    return ctx.obj.get("status") or converse(ctx.obj["socket"], {"op": "status"}, quiet=True)


@cli.command()
@click.pass_context
def lock(ctx: click.Context) -> None:
    """Lock: the closed network goes down, other interfaces come back."""
    _outcome(converse(ctx.obj["socket"], {"op": "lock"}))
    click.echo(tr("Locked."))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The status document (docs/agent.md), for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Where the laptop stands: state, lease, who is unlocked (for them only)."""
    doc = _outcome(_status_reply(ctx))["status"]
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False, sort_keys=True))
        return
    lease = doc["lease"]
    click.echo(tr("State: {state}", state=doc["state"]))
    click.echo(tr("Offline period: {days} days left", days=lease["days_left"]) + f" ({lease['end']})"
               + (" — " + tr("The offline period of this laptop is over.") if lease["expired"] else
                  " — " + tr("Check in at the office soon.") if lease["warning"] else ""))
    if doc.get("retry_after"):
        click.echo(tr("Try again in {seconds} s", seconds=doc["retry_after"]))
    if doc.get("user"):
        user = doc["user"]
        click.echo(tr("{name} since {since}", name=f"{user['name']} ({user['id']})", since=user["since"])
                   + f", {user['slot']}")


@cli.command()
@click.option("--user", required=True, help="Your staff id.")
@click.pass_context
def recover(ctx: click.Context, user: str) -> None:
    """Unlock once with a recovery code read out by the helpdesk (a lost key)."""
    ids = _outcome(converse(ctx.obj["socket"], {"op": "key-ids", "user": user}, quiet=True))["key_ids"]
    click.echo(tr("Key ids to read to the helpdesk: {ids}", ids=", ".join(ids) or "-"), err=True)
    code = click.prompt(tr("Recovery code"), err=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    _outcome(converse(ctx.obj["socket"], {"op": "recover", "user": user, "code": code}))
    click.echo(tr("Unlocked with a recovery code. IT will register your factors again at your next check-in."))


@cli.command()
@click.pass_context
def extend(ctx: click.Context) -> None:
    """Renew the offline period with an extension code from the helpdesk."""
    code = click.prompt(tr("Extension code"), err=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    result = _outcome(converse(ctx.obj["socket"], {"op": "extend", "code": code}))
    click.echo(tr("Extended until {end}.", end=result["status"]["lease"]["end"]))


def _key_source(key_file: Path | None, insecure_key_file: Path | None) -> DeviceKeySource:
    from sekisho.store.keysource import InsecureFileKeySource, KeyringKeySource, RootFileKeySource

    if insecure_key_file:
        return InsecureFileKeySource(insecure_key_file)
    if key_file:
        return RootFileKeySource(key_file)
    return KeyringKeySource("sekisho-device")


def _state_options(f: Any) -> Any:
    f = click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE, show_default=True)(f)
    f = click.option("--key-file", type=click.Path(path_type=Path), help="A root-only device key file.")(f)
    return click.option("--insecure-key-file", type=click.Path(path_type=Path), hidden=True)(f)


@cli.group("device")
def device_group() -> None:
    """This laptop's provisioning and check-in (as administrator)."""


@device_group.command("init")
@_state_options
@click.option("--it-key", type=click.Path(exists=True, path_type=Path), required=True,
              help="IT's public key (PEM), pinned from now on.")
@click.option("--device-id", help="The laptop's id (default: a new UUID).")
def device_init(state_dir: Path, key_file: Path | None, insecure_key_file: Path | None, it_key: Path,
                device_id: str | None) -> None:
    """Create this laptop's store, trail and identity; write the request for IT."""
    from agent import device

    request = device.init(state_dir, _key_source(key_file, insecure_key_file), it_key.read_bytes(),
                          device_id=device_id)
    click.echo(f"Laptop {request.device_id} initialised. Request: {state_dir / 'device-request.json'}")
    click.echo(f"Fingerprint for IT to confirm:  {request.fingerprint}")


@device_group.command("install")
@_state_options
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
def device_install(state_dir: Path, key_file: Path | None, insecure_key_file: Path | None, bundle: Path) -> None:
    """Verify and install a provisioning bundle or a check-in renewal."""
    from agent import device

    done = device.install(state_dir, _key_source(key_file, insecure_key_file), bundle.read_bytes())
    click.echo(f"Installed {done.kind} #{done.serial}: {done.users} users, {done.removed} removed.")


device_group.add_command(device_install, name="checkin-apply")


@device_group.command("checkin-request")
@_state_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def device_checkin_request(state_dir: Path, key_file: Path | None, insecure_key_file: Path | None,
                           output: Path) -> None:
    """Write the trail and its head for the office."""
    from agent import device
    from sekisho.files import atomic_write

    request = device.checkin_request(state_dir, _key_source(key_file, insecure_key_file))
    atomic_write(output, request.to_bytes(), mode=0o600)
    click.echo(f"Check-in request (head {request.head}): {output}")


def _exit(message: str, code: int) -> NoReturn:
    click.echo(f"sekisho-agent: {message}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args=args, prog_name="sekisho-agent", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_UNUSABLE)
    except click.exceptions.Abort:
        _exit("cancelled.", EXIT_UNUSABLE)
    except _Fail as exc:
        _exit(str(exc), exc.code)
    except SekishoError as exc:
        _exit(exc.diagnostics(), EXIT_REFUSED)
    except Exception:
        if "--debug" in args:
            raise
        _exit("unexpected error (run again with --debug for details).", EXIT_UNUSABLE)


if __name__ == "__main__":
    sys.exit(main())
