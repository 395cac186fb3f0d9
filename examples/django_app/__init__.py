"""A minimal Django project instrumented by ``devkit.init()`` in its ``wsgi.py``.

Run:  gunicorn examples.django_app.wsgi:application --bind 127.0.0.1:8000
"""
