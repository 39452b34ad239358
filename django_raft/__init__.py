"""django-raft: the Raft consensus protocol as a Django reusable app.

Add ``"django_raft"`` to ``INSTALLED_APPS`` and configure it with the
``DJANGO_RAFT`` settings dict. The consensus core lives in ``django_raft.core``
and does not depend on Django.
"""

__all__: list[str] = []
