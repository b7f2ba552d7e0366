"""holdingpen: share one Linux machine fairly.

perflock, pls and wholock: a fair readers/writer lock on the whole machine
(perflock.py is the Python API). Modules are imported on demand, so that a
command pays only for what it uses.
"""
