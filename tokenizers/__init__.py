"""Tokenizers: frames to image codes (`worldsim.tokenizers.image`) and player inputs to action
tokens (`worldsim.tokenizers.action`)."""
