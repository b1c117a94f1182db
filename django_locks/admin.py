"""Admin inspection of held locks: who holds a lock, since when, until when; break it.

One page lists the locks held now on every configured alias whose backend can enumerate
them (DatabaseLock, CacheLock on Redis, MemoryLock), plus DatabaseLock holders that
expired without releasing ("expired, not cleaned"). A backend that cannot enumerate, or
that is down, is named on the page with the reason. Nothing can be added or edited.

Permissions: ``django_locks.view_lock`` to look; ``django_locks.force_release`` to force
release a holder or purge expired state. A force release names the exact holder token
that was shown: if the lock changed hands since, nothing is released.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from django_locks import locks
from django_locks.backends.base import LockInfo
from django_locks.exceptions import LockError, LockNotHeldError
from django_locks.models import Lock

logger = logging.getLogger("django_locks")

HELD, EXPIRED = "held", "expired"


@dataclass
class LockRow:
    """One lock as the admin shows it."""

    alias: str
    info: LockInfo
    expired: bool = False

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def short_token(self) -> str:
        return self.info.token[:8] + "…"

    @property
    def remaining(self) -> timedelta:
        return max(self.info.expires_at - datetime.now(timezone.utc), timedelta(0))

    @property
    def remaining_display(self) -> str:
        if self.expired:
            return "expired"
        seconds = self.remaining.total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, seconds = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"

    @property
    def selection(self) -> str:
        """The checkbox value: exactly this holder of this key on this alias."""
        return json.dumps([self.alias, self.info.key, self.info.token])

    @property
    def url(self) -> str:
        return reverse("admin:django_locks_lock_detail", args=[self.alias, quote(self.info.key)])


@dataclass
class AliasReport:
    """What one alias's backend showed, or why it showed nothing."""

    alias: str
    backend: str
    rows: list[LockRow] = field(default_factory=list)
    error: str | None = None
    cannot_enumerate: str | None = None
    can_purge: bool = False


def _report(alias: str) -> AliasReport:
    try:
        backend = locks[alias]
    except LockError as e:
        return AliasReport(alias, "?", error=str(e))
    report = AliasReport(alias, type(backend).__name__)
    if not backend.supports_enumeration:
        report.cannot_enumerate = (
            "this backend cannot list its locks (a generic Django cache has no way to "
            "enumerate keys); use get_lock() or `manage.py locks` with a known key"
        )
        return report
    try:
        report.rows = [LockRow(alias, info) for info in backend.held_locks()]
        expired = backend.expired_locks()
    except LockError as e:
        report.error = str(e)
        return report
    report.rows += [LockRow(alias, info, expired=True) for info in expired]
    report.can_purge = backend.keeps_expired_state
    return report


def _parse_selection(values: list[str]) -> list[tuple[str, str, str]]:
    selected = []
    for value in values:
        try:
            alias, key, token = json.loads(value)
        except (ValueError, TypeError):
            continue
        if all(isinstance(part, str) for part in (alias, key, token)):
            selected.append((alias, key, token))
    return selected


@admin.register(Lock)
class LockAdmin(admin.ModelAdmin):
    """The "Locks" page of the admin, for every LOCKS alias (not only the database table)."""

    change_list_template = "admin/django_locks/lock/change_list.html"

    # Read-only: lock state never changes through forms.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_locks.view_lock")

    def has_force_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_locks.force_release")

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name="django_locks_lock_changelist"),
            path("force-release/", wrap(self.force_release_view),
                 name="django_locks_lock_force_release"),
            path("purge/", wrap(self.purge_view), name="django_locks_lock_purge"),
            path("<str:alias>/<path:key>/", wrap(self.detail_view), name="django_locks_lock_detail"),
        ]

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "can_force_release": self.has_force_release_permission(request),
            **extra,
        }

    # ----------------------------------------------------------------------- the list

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        reports = [_report(alias) for alias in locks]
        alias_filter = request.GET.get("alias") or ""
        status_filter = request.GET.get("status") or ""
        query = (request.GET.get("q") or "").strip()
        descending = request.GET.get("o") == "-expires"
        rows = [
            row
            for report in reports
            if not alias_filter or report.alias == alias_filter
            for row in report.rows
            if (status_filter != HELD or not row.expired)
            and (status_filter != EXPIRED or row.expired)
            and (not query or query.casefold() in row.key.casefold())
        ]
        rows.sort(key=lambda row: (row.info.expires_at, row.alias, row.key), reverse=descending)
        context = self._context(
            request,
            "Locks",
            rows=rows,
            reports=reports,
            notices=[r for r in reports if r.error or r.cannot_enumerate],
            purgeable=[r for r in reports if r.can_purge and any(row.expired for row in r.rows)],
            aliases=[r.alias for r in reports],
            alias_filter=alias_filter,
            status_filter=status_filter,
            query=query,
            descending=descending,
            statuses=[("", "All"), (HELD, "Held"), (EXPIRED, "Expired, not cleaned")],
        )
        return TemplateResponse(request, self.change_list_template, context)

    # ----------------------------------------------------------------------- one lock

    def detail_view(self, request: HttpRequest, alias: str, key: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        key = unquote(key)
        report = _report(alias) if alias in locks.settings else None
        if report is None:
            raise Http404(f"no lock alias {alias!r}")
        row = next((row for row in report.rows if row.key == key), None)
        context = self._context(request, f"Lock {key}", row=row, report=report, key=key)
        return TemplateResponse(request, "admin/django_locks/lock/detail.html", context)

    # ----------------------------------------------------------------------- force release

    def force_release_view(self, request: HttpRequest) -> HttpResponse:
        if not (self.has_view_permission(request) and self.has_force_release_permission(request)):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))
        selected = _parse_selection(request.POST.getlist("selected"))
        if not selected:
            self.message_user(request, "No locks were selected.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))
        if request.POST.get("confirm") != "yes":
            context = self._context(
                request,
                "Force release: are you sure?",
                selected=[
                    {"alias": alias, "key": key, "token": token,
                     "value": json.dumps([alias, key, token])}
                    for alias, key, token in selected
                ],
            )
            return TemplateResponse(
                request, "admin/django_locks/lock/force_release_confirmation.html", context
            )
        for alias, key, token in selected:
            self._force_release_one(request, alias, key, token)
        return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))

    def _force_release_one(self, request: HttpRequest, alias: str, key: str, token: str) -> None:
        user = request.user.get_username()
        try:
            backend = locks[alias]
            # Only the holder that was shown: release by its owner token.
            backend.release_lock(f"admin:{user}", key, owner=token)
        except LockNotHeldError:
            self.message_user(
                request,
                f"Nothing released on {alias}: lock {key!r} expired or changed hands since the "
                "page was shown (its holder is no longer the one you confirmed).",
                messages.WARNING,
            )
            return
        except (LockError, TypeError, ValueError) as e:  # a backend error, or a forged selection
            self.message_user(request, f"Could not release {key!r} on {alias}: {e}", messages.ERROR)
            return
        logger.warning(
            "lock %r force-released from the admin by %s (alias=%s, holder token=%s)",
            key, user, alias, token,
        )
        self._log(request, alias, key, f"Force-released the lock held by token {token}.")
        self.message_user(request, f"Released {key!r} on {alias}.", messages.SUCCESS)

    def _log(self, request: HttpRequest, alias: str, key: str, message: str) -> None:
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type_id=ContentType.objects.get_for_model(Lock).pk,
            object_id=f"{alias}:{key}"[:255],
            object_repr=f"{alias}: {key}"[:200],
            action_flag=DELETION,
            change_message=message,
        )

    # ----------------------------------------------------------------------- purge

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        if not (self.has_view_permission(request) and self.has_force_release_permission(request)):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))
        alias = request.POST.get("alias", "")
        if alias not in locks.settings:
            raise Http404(f"no lock alias {alias!r}")
        if request.POST.get("confirm") != "yes":
            report = _report(alias)
            context = self._context(
                request, "Purge expired locks: are you sure?", alias=alias,
                expired=[row for row in report.rows if row.expired],
            )
            return TemplateResponse(request, "admin/django_locks/lock/purge_confirmation.html", context)
        try:
            purged = locks[alias].purge()
        except LockError as e:
            self.message_user(request, f"Could not purge {alias}: {e}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))
        user = request.user.get_username()
        logger.warning("expired locks purged from the admin by %s (alias=%s, entries=%d)",
                       user, alias, purged)
        self._log(request, alias, "*", f"Purged {purged} expired lock entries.")
        self.message_user(request, f"Purged {purged} expired lock entries on {alias}.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:django_locks_lock_changelist"))
