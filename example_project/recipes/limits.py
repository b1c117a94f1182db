# At most 3 PDF renders at once, across every server: a 4th request gets 423 Locked, with
# Retry-After until the first of the 3 renders ends.
from datetime import timedelta

from django.http import HttpRequest, HttpResponse

from django_locks.decorators import lock_view


@lock_view("pdf-render", ttl=timedelta(minutes=2), limit=3)
def render_pdf(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse(f"%PDF- report {pk}", content_type="application/pdf")
