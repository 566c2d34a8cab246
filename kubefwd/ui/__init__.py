"""Outputs: each subscribes to the event bus and reads the state store and metrics (the text
log, ``--output json``); they act only through ``app.control``.

May import ``app`` and every layer below it; the only package that imports prompt_toolkit.
"""
