"""Keys and mouse -> an action in the served model's action space.

Crafter (one action per frame; the key pressed last among those held wins), as in Crafter's
own window:

    W A S D   move up / left / down / right      Space  do (chop, mine, drink, hit)
    Tab       sleep                              R T F P  place stone / table / furnace / plant
    1 2 3     make wood / stone / iron pickaxe   4 5 6  make wood / stone / iron sword

MineRL (every held key at once, mouse motion summed into the camera):

    W A S D   forward / left / back / right      Space jump, Shift sneak, Ctrl sprint
    mouse     look (the pointer is captured)     left / right click  attack / use
    1-9       hotbar                             E inventory, Q drop

A keymap knows nothing of sockets or windows: `action(held, mouse)` takes the held keys (in the
order they were pressed), the held mouse buttons and the mouse motion since the last frame.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the line above, which silences pygame's banner)

# Crafter's action ids (worldsim.envs.crafter.CRAFTER_ACTIONS), by name, so this module stays
# free of the engine's imports.
CRAFTER_KEYS: dict[int, str] = {
    pygame.K_a: "move_left", pygame.K_d: "move_right", pygame.K_w: "move_up", pygame.K_s: "move_down",
    pygame.K_SPACE: "do", pygame.K_TAB: "sleep",
    pygame.K_r: "place_stone", pygame.K_t: "place_table", pygame.K_f: "place_furnace",
    pygame.K_p: "place_plant",
    pygame.K_1: "make_wood_pickaxe", pygame.K_2: "make_stone_pickaxe", pygame.K_3: "make_iron_pickaxe",
    pygame.K_4: "make_wood_sword", pygame.K_5: "make_stone_sword", pygame.K_6: "make_iron_sword",
}

MINERL_KEYS: dict[int, str] = {
    pygame.K_w: "forward", pygame.K_s: "back", pygame.K_a: "left", pygame.K_d: "right",
    pygame.K_SPACE: "jump", pygame.K_LSHIFT: "sneak", pygame.K_RSHIFT: "sneak",
    pygame.K_LCTRL: "sprint", pygame.K_RCTRL: "sprint", pygame.K_e: "inventory", pygame.K_q: "drop",
    **{getattr(pygame, f"K_{i}"): f"hotbar.{i}" for i in range(1, 10)},
}
MINERL_MOUSE = {1: "attack", 3: "use"}  # pygame's button numbers: 1 left, 3 right


class Keymap:
    name = "base"
    keys: dict[int, str] = {}
    captures_mouse = False

    def __init__(self, space: dict[str, Any]):
        self.space = space

    def action(self, held: Sequence[int], buttons: Sequence[int] = (),
               motion: tuple[float, float] = (0.0, 0.0)) -> int | dict[str, Any]:
        raise NotImplementedError

    def uses(self, key: int) -> bool:
        return key in self.keys

    def help(self) -> list[str]:
        return [f"{pygame.key.name(k)}: {v}" for k, v in self.keys.items()]


class CrafterKeymap(Keymap):
    name = "crafter"
    keys = CRAFTER_KEYS

    def __init__(self, space: dict[str, Any]):
        super().__init__(space)
        names = list(space["names"])
        self.ids = {k: names.index(v) for k, v in self.keys.items() if v in names}
        self.noop = names.index("noop") if "noop" in names else 0

    def action(self, held: Sequence[int], buttons: Sequence[int] = (),
               motion: tuple[float, float] = (0.0, 0.0)) -> int:
        for key in reversed(held):  # the key pressed last wins
            if key in self.ids:
                return self.ids[key]
        return self.noop


class MineRLKeymap(Keymap):
    name = "minerl"
    keys = MINERL_KEYS
    captures_mouse = True

    def __init__(self, space: dict[str, Any], degrees_per_pixel: float = 0.15):
        super().__init__(space)
        self.buttons = set(space["buttons"])
        self.camera = bool(space.get("camera"))
        self.degrees_per_pixel = degrees_per_pixel

    def action(self, held: Sequence[int], buttons: Sequence[int] = (),
               motion: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
        a: dict[str, Any] = {}
        for key in held:
            name = self.keys.get(key)
            if name in self.buttons:
                a[name] = 1
        for b in buttons:
            name = MINERL_MOUSE.get(b)
            if name in self.buttons:
                a[name] = 1
        if self.camera:
            dx, dy = motion
            clip = 180.0  # the protocol's bound on one action's turn
            pitch = max(-clip, min(clip, dy * self.degrees_per_pixel))  # mouse down looks down
            yaw = max(-clip, min(clip, dx * self.degrees_per_pixel))
            a["camera"] = [pitch, yaw]
        return a


KEYMAPS = {"crafter": CrafterKeymap, "minerl": MineRLKeymap}


def keymap_for(space: dict[str, Any]) -> Keymap:
    """The keymap for an action space as the server's welcome describes it."""
    if space["name"] in KEYMAPS:
        return KEYMAPS[space["name"]](space)
    return CrafterKeymap(space) if space["kind"] == "discrete" else MineRLKeymap(space)
