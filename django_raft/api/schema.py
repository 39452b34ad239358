"""The API's OpenAPI schema (``GET schema``), whatever the project's ``REST_FRAMEWORK``.

drf-spectacular reads ``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`` in two places: when its
``extend_schema`` decorates a view method, and for every view of the project's URLconf
when it builds a schema. Here the API's methods are described on drf-spectacular's
``AutoSchema`` whatever that setting says, and the schema describes this API's routes
only, so neither the setting nor the project's other views can break it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema as spectacular_extend_schema
from drf_spectacular.views import SpectacularAPIView

__all__ = ["extend_schema", "only_this_api", "view"]

Method = TypeVar("Method", bound=Callable[..., Any])


def extend_schema(**described: Any) -> Callable[[Method], Method]:
    """drf-spectacular's ``extend_schema`` for a method of this API's views, on
    drf-spectacular's ``AutoSchema`` (the decorator would otherwise build on
    ``DEFAULT_SCHEMA_CLASS``, DRF's own ``AutoSchema`` unless the project changed it)."""

    def decorator(method: Method) -> Method:
        method.kwargs = {"schema": AutoSchema}  # type: ignore[attr-defined]
        return spectacular_extend_schema(**described)(method)

    return decorator


def only_this_api(endpoints: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Keep the endpoints of this API's views (a preprocessing hook of drf-spectacular)."""
    views = __name__.rpartition(".")[0] + ".views"
    return [e for e in endpoints if getattr(getattr(e[3], "cls", None), "__module__", "") == views]


view = SpectacularAPIView.as_view(
    custom_settings={
        "TITLE": "django-raft API",
        "PREPROCESSING_HOOKS": [f"{__name__}.only_this_api"],
    }
)
"""The OpenAPI 3 schema of this API (JSON or YAML, by the ``Accept`` header)."""
