# A class-based JSON API view, the shape of a DRF APIView: one rebuild of a report at a time.
import math
from datetime import timedelta

from django.http import JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_locks import locks
from django_locks.decorators import lock_view


def rebuild_busy(request, pk):
    """on_locked: the answer while another request rebuilds the report."""
    holder = locks["default"].get_lock(f"report:{pk}")
    # The holder's remaining life as the lock backend measured it, on its own clock: never
    # computed from expires_at and this server's clock, which may be skewed against it.
    left_ms = holder.remaining_ms if holder and holder.remaining_ms is not None else 1000
    response = JsonResponse({"detail": f"report {pk} is being rebuilt"}, status=409)
    response["Retry-After"] = str(max(1, math.ceil(left_ms / 1000)))
    return response


@method_decorator(csrf_exempt, name="dispatch")  # an API authenticated otherwise (tokens)
@method_decorator(lock_view("report:{pk}", ttl=timedelta(seconds=30), on_locked=rebuild_busy),
                  name="post")
class RebuildReportView(View):
    def get(self, request, pk):
        return JsonResponse({"report": pk})

    def post(self, request, pk):
        # ... rebuild the report: held under "report:{pk}" until this returns ...
        return JsonResponse({"report": pk, "rebuilt": True}, status=202)
