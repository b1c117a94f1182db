"""The admin, for ``python -m benchmarks --listing``."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
