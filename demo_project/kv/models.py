"""The replicated key-value store's one model."""

from django.db import models


class KeyValue(models.Model):
    """One key and its value; ``version`` counts the writes to the key."""

    key = models.CharField("key", max_length=255, primary_key=True)
    value = models.TextField("value", blank=True)
    version = models.PositiveIntegerField("version", default=0)

    class Meta:
        verbose_name = "key-value pair"
        verbose_name_plural = "key-value pairs"
        ordering = ("key",)

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r} (v{self.version})"
