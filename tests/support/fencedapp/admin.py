from django.contrib import admin

from tests.support.fencedapp.models import Document

admin.site.register(Document)
