"""The benchmark harness: django-raft and PySyncObj side by side (``bench/run.py``)."""
