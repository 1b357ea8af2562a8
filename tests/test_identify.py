"""A touch that names the user: keys enrolled to identify by touch (discoverable credentials).

K30712's software key keeps her staff id; K20581's does not. The touch only claims who is
there: the unlock after it checks the factors as for a typed id.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.gate import GateState
from sekisho.errors import AuthenticationFailed, KeyNotFound
from sekisho.factors.interaction import ScriptedInteraction
from tests.agent_helpers import PASSPHRASE, make_laptop
from tests.gui_helpers import pump
from tests.test_window import open_window, served, type_and_enter  # noqa: F401


def test_a_touch_names_the_user_and_the_factors_still_count(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    assert laptop.gate.identify(ScriptedInteraction()) == "K30712"
    with pytest.raises(AuthenticationFailed):  # named by the touch, still asked for her passphrase
        laptop.gate.unlock("K30712", ScriptedInteraction(passphrase="wrong passphrase 12"))
    assert laptop.gate.session is None


def test_a_key_not_enrolled_to_identify_says_type_the_id(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    only_k20581 = laptop.keys["K20581"]
    laptop.gate.devices = lambda: [only_k20581]
    with pytest.raises(KeyNotFound, match="identify you by a touch") as caught:
        laptop.gate.identify(ScriptedInteraction())
    assert "Type your staff id" in caught.value.advice


def test_the_window_logs_on_with_a_touch(served, root) -> None:  # noqa: F811
    laptop, path = served
    window = open_window(root, path)
    root.update()
    window.touch_button.invoke()
    pump(root, lambda: window._waiting)  # the key named K30712: her passphrase is asked
    type_and_enter(root, window.secret, PASSPHRASE["K30712"])
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["type"] == "result"
    assert laptop.gate.state is GateState.UNLOCKED and laptop.gate.session is not None
    assert laptop.gate.session.user_id == "K30712"
