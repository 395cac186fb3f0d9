"""URL patterns: their templates (``/items/<int:item_id>``) become the metrics' route label."""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("items/<int:item_id>", views.item),
    path("stock/<int:item_id>", views.stock),
    path("boom", views.boom),
]
