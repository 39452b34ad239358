"""Settings of the demo project, also used by the test suite.

SQLite (``db.sqlite3`` in the repository root, or ``DJANGO_SQLITE_PATH``) by default;
PostgreSQL when ``DATABASE_URL`` is set, e.g. ``postgres://user:pass@127.0.0.1:5432/name``.
``DEBUG`` is off unless ``DJANGO_DEBUG=1``; the built-in ``SECRET_KEY`` is refused unless
the project runs in development (debug on, or ``ALLOWED_HOSTS`` only this machine).
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from django_raft import __version__
from django_raft.environ import settings_from_env

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", ",".join(LOCAL_HOSTS)).split(",")
DEVELOPMENT = DEBUG or set(ALLOWED_HOSTS) <= set(LOCAL_HOSTS)
"""In development (debug on, or served only to this machine) a built-in key will do."""

INSECURE_SECRET_KEY = "django-insecure-dev-only-do-not-use-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEVELOPMENT:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: outside development (DJANGO_DEBUG=1 or "
            "DJANGO_ALLOWED_HOSTS limited to localhost) the demo project refuses its "
            "built-in insecure key; set DJANGO_SECRET_KEY to a long random string."
        )
    SECRET_KEY = INSECURE_SECRET_KEY

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_raft",
    "demo_project.kv",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "demo_project.wsgi.application"


def database_from_url(url: str) -> dict[str, Any]:
    """Turn ``postgres://user:pass@host:port/name`` into a Django DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r}, use postgres://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_SQLITE_PATH") or BASE_DIR / "db.sqlite3",
        }
    }
    if os.environ.get("DJANGO_SQLITE_LOG_PATH"):
        # The node's log in a file of its own (RAFT_LOG_DATABASE=raft_log): a slow
        # handler then never holds up the log.
        DATABASES["raft_log"] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["DJANGO_SQLITE_LOG_PATH"],
        }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
SPECTACULAR_SETTINGS = {"TITLE": "django-raft", "VERSION": __version__}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# The node's id, address, peers and secret come from RAFT_* variables, so that one
# settings module serves every node of the demo cluster.
DJANGO_RAFT: dict[str, Any] = settings_from_env({"REPLICATED_MODELS": ["kv.KeyValue"]})
