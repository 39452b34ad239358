"""django-celery-beat installed for a while, in a project that does not install it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.contrib import admin
from django.test import override_settings


@contextmanager
def celery_beat_installed() -> Iterator[None]:
    """Install ``django_celery_beat`` meanwhile; put the admin site back afterwards.

    Installing an app runs the admin's autodiscovery, which registers its model admins
    on the global site; left there, every admin page would look up an app that is no
    longer installed.
    """
    registered = dict(admin.site._registry)
    try:
        with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "django_celery_beat"]):
            yield
    finally:
        admin.site._registry.clear()
        admin.site._registry.update(registered)
