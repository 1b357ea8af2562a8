"""The service: holds the laptop's state, runs the gate, answers on the control channel.

State lives in one directory only the service can read and write (docs/agent.md):
``store.db`` (the credential store), ``trail.jsonl`` and its key file, ``it-public.pem``
(IT's pinned key), ``policy.toml`` and ``policy.toml.sig``. The device key comes from a
:class:`DeviceKeySource` (the OS keyring, or a root-only file).

The channel is a Unix socket anyone on the laptop may connect to; what they may do is
decided by their peer credentials: anyone may ask to unlock as a Sekisho user, recover or
enter an extension code; only the OS user who unlocked (or root) sees the session's
details or locks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import protocol
from agent.clock import TrustedClock
from agent.gate import Gate
from agent.network import NetworkBackend, backend_for
from sekisho import crypto
from sekisho.errors import Cancelled, FormatError, SekishoError
from sekisho.factors import fido2
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.policy import load_policy_file
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.store import CredentialStore
from sekisho.trail import EventType, Trail

log = logging.getLogger(__name__)

PROMPT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


#: Seconds a logon window's request waits for a key or card to be inserted.
DEVICE_WAIT = 60.0


class ChannelInteraction(UserInteraction):
    """Relays the factors' questions to the client on the other end of the channel."""

    def __init__(self, sock: socket.socket, *, device_wait: float = 0.0) -> None:
        self._sock = sock
        self.device_wait = device_wait
        self._cancelled = threading.Event()
        self.cancel_event = self._cancelled
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()

    # While a key waits for the person, the client may say "cancel": a watcher reads the
    # channel then (and only then: a prompt's answer is read by _ask) and tells the key.

    def _watch(self) -> None:
        if self._watcher is not None:
            return
        self._stop_watch.clear()
        self._watcher = threading.Thread(target=self._watch_loop, daemon=True, name="sekisho-cancel-watch")
        self._watcher.start()

    def _watch_loop(self) -> None:
        while not self._stop_watch.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.1)
                if not ready:
                    continue
                message = protocol.receive(self._sock)
            except (protocol.ChannelClosed, OSError, FormatError, ValueError):
                self._cancelled.set()  # the window went away: nobody will touch for it
                return
            if message.get("type") == "cancel":
                self._cancelled.set()
                return

    def stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self._stop_watch.set()
            watcher.join(5)

    def _ask(self, kind: str, prompt: Prompt) -> str:
        self.stop_watching()
        if self._cancelled.is_set():
            raise Cancelled("Cancelled.")
        protocol.send(self._sock, {"type": "prompt", "kind": kind, "user": prompt.user_id,
                                   "attempts_remaining": prompt.attempts_remaining})
        self._sock.settimeout(PROMPT_TIMEOUT)
        try:
            answer = protocol.receive(self._sock)
        except (protocol.ChannelClosed, OSError, FormatError):
            raise Cancelled("The logon window was closed.") from None
        if answer.get("type") != "answer" or not isinstance(answer.get("value"), str):
            raise Cancelled("Cancelled.")
        return str(answer["value"])

    def request_passphrase(self, prompt: Prompt) -> str:
        return self._ask("passphrase", prompt)

    def request_code(self, prompt: Prompt) -> str:
        return self._ask("code", prompt)

    def request_pin(self, prompt: Prompt) -> str:
        return self._ask("pin", prompt)

    def _notice(self, kind: str) -> None:
        with contextlib.suppress(OSError):  # a vanished client is handled with the result
            protocol.send(self._sock, {"type": "notice", "kind": kind})
        self._watch()

    def prompt_touch(self, prompt: Prompt) -> None:
        self._notice("touch")

    def prompt_fingerprint(self, prompt: Prompt) -> None:
        self._notice("fingerprint")

    def prompt_insert(self, prompt: Prompt) -> None:
        self._notice("insert")


def error_message(exc: SekishoError) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "error", "error": type(exc).__name__, "message": str(exc),
                               "advice": exc.advice}
    for name in ("retry_after", "attempts_remaining", "attempts_before_delay", "attempts_before_disable", "group"):
        value = getattr(exc, name, None)
        if value is not None:
            message[name] = value
    return message


class Service:
    """Opens the laptop's state and serves the gate on a Unix socket."""

    def __init__(self, gate: Gate, state_dir: Path | None = None) -> None:
        self.gate = gate
        self.state_dir = state_dir
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._policy_seen = self._policy_stamp()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def open(cls, state_dir: Path, key_source: DeviceKeySource, *, network: NetworkBackend | None = None,
             devices: fido2.DeviceSource | None = None) -> Service:
        state_dir = Path(state_dir)
        check_state_dir(state_dir)
        it_public = crypto.public_key_from_pem((state_dir / "it-public.pem").read_bytes(), what="IT public key")
        policy = load_policy_file(state_dir / "policy.toml", it_public)
        store = CredentialStore.open(state_dir / "store.db", key_source)
        trail = Trail.open(state_dir / "trail.jsonl", key_source)
        gate = Gate(store=store, policy=policy, trail=trail, it_public=it_public,
                    network=network or backend_for(policy, state_dir), clock=TrustedClock(store), devices=devices)
        gate.cleanup_network()
        return cls(gate, state_dir)

    def _policy_stamp(self) -> tuple[int, ...] | None:
        if self.state_dir is None:
            return None
        stamp: list[int] = []
        for name in ("policy.toml", "policy.toml.sig", "it-public.pem"):
            try:
                st = (self.state_dir / name).stat()
            except OSError:
                return None
            stamp += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamp)

    def reload_policy(self) -> None:
        """Pick up a policy (or IT key) installed since (``device install``): re-verified, or refused."""
        stamp = self._policy_stamp()
        if stamp is None or stamp == self._policy_seen or self.state_dir is None:
            return
        self._policy_seen = stamp
        try:
            # IT's key first (a rotation announced in a renewal), then the policy it signed.
            it_public = crypto.public_key_from_pem((self.state_dir / "it-public.pem").read_bytes(),
                                                   what="IT public key")
            self.gate.policy = load_policy_file(self.state_dir / "policy.toml", it_public)
            self.gate.it_public = it_public
        except SekishoError as exc:
            log.error("a new policy file was refused, the previous policy stays: %s", exc)
            self.gate.trail.append(EventType.TAMPERING_DETECTED, details={"what": "policy", "error": str(exc)})
            return
        log.info("policy reloaded")
        self.gate.trail.append(EventType.POLICY_INSTALLED, details={
            "slot_kinds": [k.value for k in self.gate.policy.permitted_slot_kinds]})

    # --- one request --------------------------------------------------------------------

    def handle(self, sock: socket.socket) -> None:
        peer = peer_of(sock)
        sock.settimeout(30.0)
        try:
            request = protocol.check_request(protocol.receive(sock))
        except FormatError as exc:
            self._reply(sock, {"type": "error", "error": "BadRequest", "message": str(exc), "advice": ""})
            return
        except (protocol.ChannelClosed, OSError):
            return
        try:
            result = self._dispatch(request, peer, sock)
        except SekishoError as exc:
            self._reply(sock, error_message(exc))
            return
        except Exception:  # a bug must not take the service down; the client gets an answer
            log.exception("unexpected error handling %s", request.get("op"))
            self._reply(sock, {"type": "error", "error": "InternalError", "message": "The service hit an internal "
                               "error; the laptop stays locked.", "advice": "Call the helpdesk."})
            return
        self._reply(sock, {"type": "result", "ok": True, **result})

    @staticmethod
    def _reply(sock: socket.socket, message: dict[str, Any]) -> None:
        try:
            protocol.send(sock, message)
        except OSError:
            log.info("the client went away before the answer")

    def _dispatch(self, request: dict[str, Any], peer: Peer, sock: socket.socket) -> dict[str, Any]:
        gate, op = self.gate, request["op"]
        owner = gate.unlocked_uid
        if op == "status":
            return {"status": gate.status(details=peer.is_root or (owner is not None and owner == peer.uid))}
        if op == "lock":
            if owner is not None and not (peer.is_root or owner == peer.uid):
                raise PermissionDenied("Only the person who unlocked this laptop, or an administrator, may lock it.")
            gate.lock("request")
            return {"status": gate.status(details=False)}

        if op == "apps":
            latest = owner if owner is not None else (gate.last_session[1] if gate.last_session else None)
            if not (peer.is_root or (latest is not None and latest == peer.uid)):
                raise PermissionDenied("Only the person who unlocked this laptop may report its apps.")
            gate.record_apps(request)
            return {}

        def progress(step: str, details: Any) -> None:
            with contextlib.suppress(OSError):
                protocol.send(sock, {"type": "progress", "step": step, "details": dict(details)})

        user = request.get("user", "")
        self.reload_policy()
        # A logon window asks to wait for the person to insert their key or card.
        interaction = ChannelInteraction(sock, device_wait=DEVICE_WAIT if request.get("wait") else 0.0)
        try:
            if op == "unlock" and request.get("identify"):  # a touch names the user (no id typed)
                user = gate.identify(interaction)
            if op == "unlock":
                gate.unlock(user, interaction, uid=peer.uid, progress=progress)
            elif op == "recover":
                gate.recover(user, request.get("code", ""), interaction, uid=peer.uid, progress=progress)
            elif op == "extend":
                gate.extend(request.get("code", ""))
            elif op == "key-ids":
                return {"key_ids": gate.recovery_key_ids(user)}
        finally:
            interaction.stop_watching()  # the answer goes out only once nothing else reads the channel
        return {"status": gate.status(details=True)}

    # --- serving ------------------------------------------------------------------------

    def serve(self, socket_path: Path) -> None:
        """Serve until :meth:`shutdown`; one thread per connection, one gate operation at a time."""
        socket_path = Path(socket_path)
        socket_path.unlink(missing_ok=True)
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                service.handle(self.request)

        server = socketserver.ThreadingUnixStreamServer(str(socket_path), Handler)
        server.daemon_threads = True
        os.chmod(socket_path, 0o666)  # noqa: S103 - anyone may connect; peer credentials decide the rest
        self._server = server
        log.info("serving on %s", socket_path)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            socket_path.unlink(missing_ok=True)

    def serve_in_thread(self, socket_path: Path) -> threading.Thread:
        thread = threading.Thread(target=self.serve, args=(socket_path,), daemon=True, name="sekisho-channel")
        thread.start()
        for _ in range(200):
            if self._server is not None:
                break
            threading.Event().wait(0.01)
        return thread

    def start_watching(self, *, interval: float = 2.0, logind: bool = True) -> None:
        """The watches that lock on their own: the network (every ``interval`` seconds) and
        logind's screen lock, suspend and idle (agent/triggers.py)."""
        from agent.triggers import LogindTriggers

        def network() -> None:
            while not self._stop.wait(interval):
                try:
                    self.gate.watch()
                except Exception:  # a bug in one look must not end the watch
                    log.exception("network watch")

        targets: list[Callable[[], None]] = [network]
        if logind:
            self.triggers = LogindTriggers(self.gate.lock, uid=lambda: self.gate.unlocked_uid,
                                           idle_minutes=lambda: self.gate.policy.lock_idle_minutes, tick=1.0)
            targets.append(lambda: self.triggers.run(self._stop))
        for target in targets:
            thread = threading.Thread(target=target, daemon=True, name="sekisho-watch")
            thread.start()
            self._threads.append(thread)

    def stop_serving(self) -> None:
        """Stop answering on the socket (serving in another thread); the gate stays open."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def shutdown(self) -> None:
        """Stop a service serving in another thread, then :meth:`close`."""
        self.stop_serving()
        self.close()

    def close(self) -> None:
        """Lock (the link goes down) and close the store and the trail."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self.gate.lock("service-stop")
        self.gate.store.close()
        self.gate.trail.close()
        close_network = getattr(self.gate.network, "close", None)
        if close_network is not None:
            close_network()


class PermissionDenied(SekishoError):
    """The asking OS user may not do this."""


def check_state_dir(path: Path) -> None:
    """The state directory must be a real directory that only its owner can write or read."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise SekishoError(f"The service's state directory {path} does not exist.",
                           advice="Install Sekisho on this laptop (sekisho-agent init).") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SekishoError(f"{path} is not a directory.")
    if info.st_mode & 0o077:
        raise SekishoError(f"The service's state directory {path} is open to other users (mode "
                           f"{stat.S_IMODE(info.st_mode):o}).", advice=f"Run: chmod 700 {path}")
    if info.st_uid != os.geteuid():
        raise SekishoError(f"The service's state directory {path} belongs to another user.")

