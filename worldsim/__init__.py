"""worldsim: an interactive world-model engine.

A player presses keys; a transformer, not a game, draws the next frame. The flow of data:
episodes (`worldsim.data`) -> image and action tokens (`worldsim.tokenizers`) -> the world model
(`worldsim.model`) -> parallel decoders and sessions (`worldsim.inference`) -> the server and
clients. README.md shows the commands that take a game through each step.
"""

__version__ = "0.1.0"
