"""Serving: one worker per loaded model, with a request queue, dynamic batching, Stop and per-token timing.

``engine`` holds the queue and the worker, ``continuous`` the continuous scheduler's glue, ``results`` the
types a request streams and ends with. Everything here talks to the model through ``runtimes.LoadedModel``.
"""
