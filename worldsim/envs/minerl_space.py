"""MineRL's action space (1.0 API), kept apart from the adapter so it loads without minerl."""

from worldsim.envs.base import ActionSpace

MINERL_BUTTONS = (
    "forward", "back", "left", "right", "jump", "sneak", "sprint",
    "attack", "use", "drop", "swapHands", "pickItem", "inventory", "ESC",
    *(f"hotbar.{i}" for i in range(1, 10)),
)
MINERL_SPACE = ActionSpace(name="minerl", kind="dict", buttons=MINERL_BUTTONS, camera=True)
# MineRL and the VPT recordings run at 20 frames per second.
MINERL_FPS = 20
