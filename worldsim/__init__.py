"""worldsim: an interactive world-model engine.

A player presses keys; a transformer, not a game, draws the next frame. See DESIGN.md for the
flow of data: episodes -> image/action tokens -> world model -> parallel decoders -> server.
"""

__version__ = "0.1.0"
