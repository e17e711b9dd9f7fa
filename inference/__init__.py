"""Inference: the KV cache, one module per decoding strategy, sessions and the frame server."""
