"""Observation: the request history and what is built on it.

``records`` is one history row, ``history`` the SQLite store every process writes, ``listeners`` the
exporters fed as rows are written, ``dashboard`` the Monitor page's queries, ``prometheus`` and
``tensorboard`` the exporters.
"""
