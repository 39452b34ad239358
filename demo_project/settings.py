"""Settings of the demo project, also used by the test suite.

SQLite (``db.sqlite3`` in the repository root) by default; PostgreSQL when
``DATABASE_URL`` is set, e.g. ``postgres://user:pass@127.0.0.1:5432/name``.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-dev-only-do-not-use-in-production"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

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
SPECTACULAR_SETTINGS = {"TITLE": "django-raft", "VERSION": "0.1.0"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def raft_settings_from_environment(environ: Any) -> dict[str, Any]:
    """Read this node's DJANGO_RAFT settings from RAFT_* variables (one process per node).

    RAFT_NODE_ID, RAFT_ADDRESS, RAFT_SECRET; RAFT_CLUSTER as "n1=http://...,n2=http://...";
    numbers such as RAFT_SNAPSHOT_THRESHOLD or RAFT_ELECTION_TIMEOUT as plain numbers.
    """
    result: dict[str, Any] = {"REPLICATED_MODELS": ["kv.KeyValue"]}
    for key, value in environ.items():
        if not key.startswith("RAFT_") or key == "RAFT_TEST_POSTGRES":
            continue
        name = key[len("RAFT_") :]
        if name == "CLUSTER":
            pairs = [item.split("=", 1) for item in value.split(",") if item]
            result[name] = {node_id: address for node_id, address in pairs}
        elif name in ("NODE_ID", "ADDRESS", "SECRET", "DATABASE", "URL_PREFIX"):
            result[name] = value
        else:
            try:
                result[name] = int(value)
            except ValueError:
                result[name] = float(value)
    return result


# The node's id, address, peers and secret come from the environment, so that one
# settings module serves every node of the demo cluster.
DJANGO_RAFT: dict[str, Any] = raft_settings_from_environment(os.environ)
