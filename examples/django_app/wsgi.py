"""WSGI entry point: ``devkit.init()`` before Django builds its handler.

Run:  gunicorn examples.django_app.wsgi:application --bind 127.0.0.1:8000
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

import devkit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
devkit.init()  # the handler built below gets devkit's middleware first
application = get_wsgi_application()
devkit.health.mark_started()
