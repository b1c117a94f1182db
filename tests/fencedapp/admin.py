from django.contrib import admin

from tests.fencedapp.models import Document

admin.site.register(Document)
