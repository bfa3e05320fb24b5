"""A world simple enough to judge by program: flat-coloured shapes on a plain background.

`world` draws scenes and captions them, `captions` parses what people type, `oracle` reads an
image back into shapes, colours and a relation. Pure numpy + Pillow: no torch, so the API,
tests and tools can all use it.
"""
