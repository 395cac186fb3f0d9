"""Settings of the example Django project: no database, no apps, one URL module."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
DATABASES: dict[str, dict[str, str]] = {}
INSTALLED_APPS: list[str] = []
# devkit.init() inserts its own middleware first; these are the application's.
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "examples.django_app.views.OutOfStockMiddleware",
]
USE_TZ = True
