"""Clients: the pygame window, keymaps and the websocket client. Only this package imports pygame."""
