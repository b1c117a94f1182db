"""Admin inspection of held locks: who holds a lock, since when, until when; break it.

One page lists the locks held now on every configured alias whose backend can enumerate
them (DatabaseLock, CacheLock on Redis, MemoryLock), plus DatabaseLock holders that
expired without releasing ("expired, not cleaned"). A backend that cannot enumerate, or
that is down, is named on the page with the reason. Nothing can be added or edited.

The rows are not model instances, so the list is a small stand-in for the admin's
ChangeList (:class:`LockChangeList`) rendered by the admin's own change-list template,
list filters, search form and action form. Force release is an admin action with a
confirmation page in the pattern of ``delete_selected``; purging an alias's expired state
goes through the same confirmation page. Both are recorded with the admin's log helpers.

Permissions: ``django_locks.view_lock`` to look; ``django_locks.force_release`` to force
release a holder or purge expired state. A force release names the exact holder token
that was shown: if the lock changed hands since, nothing is released.

A key may have several holders (shared locks, semaphores): the list has one row per
holder, with its mode ("exclusive", "shared", or "2 of 3": holders of the key now, of the
limit that holder was admitted with). Force release of a row releases that holder alone
(``release_lock(..., owner=token)``), never another holder of the key; the lock's page
also offers to force-release the whole key (``force_release``: every holder), after the
same confirmation page.

A lock's object id is ``"<alias>:<key>"``; its detail page, listing every holder of the
key, is at ``<admin-quoted object id>/``, a single path segment whatever the key holds
(``/``, ``%``, ``?``, ``#``, and never a bare ``.`` or ``..``). One holder's page is at
``<admin-quoted object id>/<token>/`` (owner tokens are 32 hex digits).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, re_path, reverse
from django.utils.html import conditional_escape, format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_locks import locks
from django_locks.backends.base import LockInfo
from django_locks.exceptions import LockError, LockNotHeldError
from django_locks.inspection import AliasListing, list_alias
from django_locks.models import Lock
from django_locks.values import validate_page_arguments

logger = logging.getLogger("django_locks")

HELD, EXPIRED = "held", "expired"
DESCENDING = "-expires"


def object_id(alias: str, key: str) -> str:
    """A lock's object id: in its detail URL (admin-quoted) and in the admin log."""
    return f"{alias}:{key}"


def detail_url(alias: str, key: str) -> str:
    """The lock's page: every holder of ``key`` on ``alias``."""
    return reverse("admin:django_locks_lock_detail", args=[quote(object_id(alias, key))])


def holder_url(alias: str, key: str, token: str) -> str:
    """One holder's page: the holder ``token`` of ``key`` on ``alias``."""
    return reverse("admin:django_locks_lock_holder", args=[quote(object_id(alias, key)), token])


@dataclass
class LockRow:
    """One holder of one lock, as the admin shows it."""

    alias: str
    info: LockInfo
    expired: bool = False
    #: How many live holders its key has on its alias (None: not counted, or expired).
    holders: int | None = None

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def pk(self) -> str:
        """The action checkbox's value: exactly this holder of this key on this alias."""
        return json.dumps([self.alias, self.info.key, self.info.token])

    @property
    def short_token(self) -> str:
        return self.info.token[:8] + "…"

    @property
    def fencing_display(self) -> str:
        """The fencing token as every page (and ``manage.py locks``) shows it: the whole
        integer, digits only, never grouped or localized, so that it can be copied."""
        return str(self.info.fencing_token)

    @property
    def mode_display(self) -> str:
        """"exclusive", "shared", or for a semaphore holder "2 of 3" (holders of its key
        now, of the limit it was admitted with)."""
        return self.info.mode_label(self.holders)

    @property
    def exclusive(self) -> bool:
        return self.info.mode.exclusive

    @property
    def remaining_display(self) -> str:
        if self.expired:
            return "expired"
        # As the backend measured it, on its own clock: never this server's.
        remaining = self.info.remaining
        if remaining is None:
            return "unknown"
        seconds = max(remaining, timedelta(0)).total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, seconds = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"

    @property
    def url(self) -> str:
        """The lock's page (every holder of the key)."""
        return detail_url(self.alias, self.info.key)

    @property
    def holder_url(self) -> str:
        """This holder's page."""
        return holder_url(self.alias, self.info.key, self.info.token)

    def __str__(self) -> str:
        return f"{self.alias}: {self.info.key}"


class LogObject:
    """What the admin's log helpers record: a lock (object id "alias:key") or an alias's
    expired locks (object id "alias"). The log links them through the admin's change URL."""

    _meta = Lock._meta  # the content type of the log entry

    def __init__(self, pk: str, text: str) -> None:
        self.pk = pk
        self.text = text

    def __str__(self) -> str:
        return self.text


def _parse_selected(value: str) -> tuple[str, str, str] | None:
    try:
        selected = json.loads(value)
    except ValueError:
        return None
    if isinstance(selected, list) and len(selected) == 3 and all(isinstance(s, str) for s in selected):
        return selected[0], selected[1], selected[2]
    return None


class LockRows(list):
    """Rows where the admin's action machinery expects a queryset: ``response_action``
    narrows them to the selected holders with ``filter(pk__in=...)``. A selected holder
    that matches no row (it expired or the lock changed hands since the page was shown,
    or the value was forged) is kept in ``missing`` as (alias, key)."""

    def __init__(self, rows: Iterable[LockRow] = (), errors: dict[str, str] | None = None) -> None:
        super().__init__(rows)
        self.errors = errors or {}  # alias -> backend error: its rows could not be listed
        self.missing: list[tuple[str, str]] = []

    def filter(self, pk__in: Iterable[str]) -> LockRows:
        by_holder = {(row.alias, row.key, row.info.token): row for row in self}
        found = LockRows(errors=self.errors)
        for selected in dict.fromkeys(filter(None, map(_parse_selected, pk__in))):
            if selected in by_holder:
                found.append(by_holder[selected])
            else:
                found.missing.append(selected[:2])
        return found


def _rows(listing: AliasListing) -> list[LockRow]:
    """One row per holder of the listing: its live holders, then its expired ones."""
    counts = Counter(info.key for info in listing.holders)  # live holders per key
    return ([LockRow(listing.alias, info, holders=counts[info.key]) for info in listing.holders]
            + [LockRow(listing.alias, info, expired=True) for info in listing.expired])


def _all_rows(listings: list[AliasListing]) -> LockRows:
    return LockRows(
        (row for listing in listings for row in _rows(listing)),
        errors={listing.alias: listing.message(code=str) for listing in listings if listing.error},
    )


def _valid_prefix(prefix: str) -> bool:
    try:
        validate_page_arguments(prefix, None, 1)
    except ValueError:
        return False
    return True


def notice_html(listing: AliasListing) -> SafeString:
    """Why an alias shows no rows, for the page: its command in ``<code>``."""
    return mark_safe(listing.message(code=lambda command: format_html("<code>{}</code>", command),
                                     text=conditional_escape))


#: The query parameter of the changelist's page of one alias: the cursor it starts at.
CURSOR_VAR = "cursor"


@dataclass
class AliasPage:
    """What the changelist says of one alias's page: how many locks it shows, of how many
    (None: not counted), and the links to its next page and back to its first."""

    alias: str
    shown: int
    total: int | None
    next_url: str | None
    first_url: str | None


@dataclass
class Notice:
    """An alias the list could not show: its name, backend, and why (HTML)."""

    alias: str
    backend_name: str
    error: bool
    html: SafeString


class LockListFilter(admin.SimpleListFilter):
    """A list filter over rows (a list, not a queryset)."""

    def value(self) -> str | None:
        # Django 4.2 keeps the query string's list of values as given; 5.0+ its last item.
        value = super().value()
        return value[-1] if isinstance(value, list) else value


class AliasFilter(LockListFilter):
    title = "alias"
    parameter_name = "alias"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(alias, alias) for alias in locks]

    def queryset(self, request: HttpRequest, rows: list[LockRow]) -> list[LockRow]:
        return [row for row in rows if row.alias == self.value()] if self.value() else rows


class StatusFilter(LockListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(HELD, "Held"), (EXPIRED, "Expired, not cleaned")]

    def queryset(self, request: HttpRequest, rows: list[LockRow]) -> list[LockRow]:
        if self.value() in (HELD, EXPIRED):
            return [row for row in rows if row.expired == (self.value() == EXPIRED)]
        return rows


class LockChangeList:
    """What the admin's change-list template, list filters and search form read from a
    ChangeList, over the rows of every alias: filtered, searched, sorted by expiry."""

    formset = date_hierarchy = None
    is_popup = add_facets = is_facets_optional = False
    show_admin_actions = True

    def __init__(self, request: HttpRequest, model_admin: LockAdmin, listings: list[AliasListing]) -> None:
        self.model_admin = model_admin
        self.model = model_admin.model
        self.opts = model_admin.opts
        # Every link and the search form go back to the first page: only "next page" keeps
        # (sets) a cursor.
        self.params = {name: value for name, value in request.GET.items() if name != CURSOR_VAR}
        self.filter_params = {name: values for name, values in request.GET.lists() if name != CURSOR_VAR}
        self.query = request.GET.get(SEARCH_VAR, "").strip()
        self.search_fields = model_admin.search_fields
        self.search_help_text = model_admin.search_help_text
        self.descending = request.GET.get(ORDER_VAR) == DESCENDING
        self.filter_specs = [
            list_filter(request, dict(request.GET.lists()), self.model, model_admin)
            for list_filter in model_admin.list_filter
        ]
        self.has_filters = bool(self.filter_specs)
        self.has_active_filters = any(spec.value() is not None for spec in self.filter_specs)
        self.clear_all_filters_qs = self.get_query_string(
            remove=[name for spec in self.filter_specs for name in spec.expected_parameters()]
        )
        self.listings = listings
        self.all_rows = _all_rows(listings)
        rows: list[LockRow] = list(self.all_rows)
        for spec in self.filter_specs:
            rows = spec.queryset(request, rows)
        rows, _duplicates = model_admin.get_search_results(request, rows, self.query)
        rows.sort(key=lambda row: (row.info.expires_at, row.alias, row.key), reverse=self.descending)
        self.result_list = LockRows(rows, errors=self.all_rows.errors)
        self.result_count = len(self.result_list)  # holders (one row each)
        self.lock_count = len({(row.alias, row.key) for row in self.result_list})
        # Held keys of every alias listed, where each backend counts them (None: one does not).
        totals = [listing.total for listing in listings if listing.listed]
        self.full_result_count = sum(totals) if None not in totals else None  # type: ignore[arg-type]
        self.show_full_result_count = self.full_result_count is not None and not self.query
        self.pages = [
            AliasPage(listing.alias, listing.lock_count, listing.total,
                      self.get_query_string({CURSOR_VAR: listing.next_cursor, "alias": listing.alias})
                      if listing.next_cursor else None,
                      self.get_query_string() if request.GET.get(CURSOR_VAR) else None)
            for listing in listings if listing.listed and listing.paged
        ]
        self.order_query_string = self.get_query_string({ORDER_VAR: None if self.descending else DESCENDING})

    def get_query_string(self, new_params: dict[str, Any] | None = None,
                         remove: list[str] | None = None) -> str:
        """As ChangeList.get_query_string: these parameters, changed and removed as told."""
        params = {name: values for name, values in self.filter_params.items()
                  if not any(name.startswith(prefix) for prefix in remove or ())}
        for name, value in (new_params or {}).items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = value
        return "?" + urlencode(sorted(params.items()), doseq=True)


@admin.register(Lock)
class LockAdmin(admin.ModelAdmin):
    """The "Locks" page of the admin, for every LOCKS alias (not only the database table)."""

    change_list_template = "admin/django_locks/lock/change_list.html"
    confirmation_template = "admin/django_locks/lock/confirmation.html"
    detail_template = "admin/django_locks/lock/detail.html"
    actions = ["force_release"]
    list_filter = [AliasFilter, StatusFilter]
    search_fields = ["key"]
    search_help_text = "Search by the start of the key (case-sensitive)."
    #: The locks one page shows, of every alias together (each listed alias gets its share).
    list_per_page = 100

    # Read-only: lock state never changes through forms.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_force_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.force_release")

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("force-release/", wrap(self.force_release_view), name=f"{name}_force_release"),
            path("force-release-key/", wrap(self.force_release_key_view),
                 name=f"{name}_force_release_key"),
            path("purge/", wrap(self.purge_view), name=f"{name}_purge"),
            # One path segment, before the admin's own object URLs (.../change/ and the rest).
            path("<str:object_id>/", wrap(self.detail_view), name=f"{name}_detail"),
            # One holder: the lock's segment and an owner token (never "change", "history"...).
            re_path(r"^(?P<object_id>[^/]+)/(?P<token>[0-9a-f]{32})/$", wrap(self.holder_view),
                    name=f"{name}_holder"),
            *super().get_urls(),
        ]

    def get_search_results(self, request: HttpRequest, rows: list[LockRow], search_term: str) -> Any:
        """Rows whose key starts with the search term (the backends list only those; the
        expired rows are narrowed here). No duplicates possible."""
        return [row for row in rows if row.key.startswith(search_term)], False

    def _listings(self, request: HttpRequest) -> list[AliasListing]:
        """One page of each listed alias (the alias filter's, or every alias, each with its
        share of ``list_per_page``): keys starting with the search term, from the cursor
        of the page asked for (with an alias chosen)."""
        chosen = request.GET.get(AliasFilter.parameter_name)
        aliases = [chosen] if chosen in list(locks) else list(locks)
        limit = max(1, self.list_per_page // max(1, len(aliases)))
        prefix = request.GET.get(SEARCH_VAR, "").strip()
        cursor = request.GET.get(CURSOR_VAR) if len(aliases) == 1 and chosen else None
        expired = request.GET.get(StatusFilter.parameter_name) != HELD
        try:
            return [list_alias(alias, expired=expired, prefix=prefix, cursor=cursor, limit=limit)
                    for alias in aliases]
        except (TypeError, ValueError) as e:  # a cursor or a search the backends refuse
            self.message_user(request, f"Showing the first page: {e}", messages.WARNING)
            prefix = prefix if not prefix or _valid_prefix(prefix) else ""
            return [list_alias(alias, expired=expired, prefix=prefix, limit=limit) for alias in aliases]

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "subtitle": None,
            "media": self.media,
            "can_force_release": self.has_force_release_permission(request),
            **extra,
        }

    # ----------------------------------------------------------------------- the list

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        listings = self._listings(request)
        cl = LockChangeList(request, self, listings)
        actions = self.get_actions(request)
        # As ModelAdmin.changelist_view: an action chosen in the action form ("index"), or
        # confirmed on its confirmation page (the selected holders and post=yes).
        if actions and request.method == "POST" and (
            "index" in request.POST or helpers.ACTION_CHECKBOX_NAME in request.POST
        ):
            if request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                response = self.response_action(request, queryset=cl.result_list)
                if response:
                    return response
            else:
                self.message_user(request, _(
                    "Items must be selected in order to perform actions on them. No items have "
                    "been changed."), messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())

        action_form = None
        media = self.media
        if actions:
            action_form = self.action_form(auto_id=None)
            action_form.fields["action"].choices = self.get_action_choices(request)
            media += action_form.media
        context = self._context(
            request,
            self.opts.verbose_name_plural.capitalize(),
            cl=cl,
            module_name=str(self.opts.verbose_name_plural),
            media=media,
            is_popup=False,
            to_field=None,
            has_add_permission=False,
            action_form=action_form,
            actions_on_top=self.actions_on_top,
            actions_on_bottom=self.actions_on_bottom,
            actions_selection_counter=self.actions_selection_counter,
            selection_note=_("0 of %(cnt)s selected") % {"cnt": cl.result_count},
            selection_note_all=ngettext(
                "%(total_count)s selected", "All %(total_count)s selected", cl.result_count
            ) % {"total_count": cl.result_count},
            preserved_filters=self.get_preserved_filters(request),
            notices=[Notice(listing.alias, listing.backend_name, listing.error is not None,
                            notice_html(listing))
                     for listing in listings if not listing.listed],
            purgeable=[listing.alias for listing in listings if listing.can_purge and listing.expired],
            **(extra_context or {}),
        )
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.change_list_template, context)

    # ----------------------------------------------------------------------- one lock

    def _split_object_id(self, object_id: str) -> tuple[str, str]:
        """(alias, key) of a lock's object id as its URL carries it: quote("alias:key")."""
        text = unquote(object_id)
        # The longest matching alias: an alias may itself hold a colon.
        alias = max((a for a in locks if text.startswith(f"{a}:")), key=len, default=None)
        if alias is None:
            raise Http404(f"no lock alias in {text!r}")
        return alias, text[len(alias) + 1:]

    def detail_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The lock's page: every holder of the key, each with its force release, and the
        force release of the whole key."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        alias, key = self._split_object_id(object_id)
        return self._detail(request, alias, key, None)

    def holder_view(self, request: HttpRequest, object_id: str, token: str) -> HttpResponse:
        """One holder's page (the lock's page narrowed to ``token``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        alias, key = self._split_object_id(object_id)
        return self._detail(request, alias, key, token)

    def _detail(self, request: HttpRequest, alias: str, key: str, token: str | None) -> HttpResponse:
        listing = list_alias(alias, expired=True, key=key)
        rows = [row for row in _rows(listing) if row.key == key]
        held = [row for row in rows if not row.expired]
        if token is not None:
            rows = [row for row in rows if row.info.token == token]
        title = f"Lock {key}" if token is None else f"Lock {key}, holder {token[:8]}…"
        context = self._context(
            request, title, rows=rows, row=rows[0] if rows else None, listing=listing,
            notice=None if listing.listed else notice_html(listing), key=key,
            token=token, held_count=len(held), lock_url=detail_url(alias, key),
            # The whole key: offered where a release of one holder may not free it.
            offer_key_release=token is None and (len(held) > 1 or any(not r.exclusive for r in held)),
        )
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.detail_template, context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: Any = None) -> HttpResponse:
        """The admin's change URL, where the admin log links: a lock's detail page (object
        id "alias:key"), or an alias's list (object id "alias", of a purge)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if unquote(object_id) in list(locks):
            changelist = reverse("admin:django_locks_lock_changelist")
            return HttpResponseRedirect(f"{changelist}?{urlencode({'alias': unquote(object_id)})}")
        return HttpResponseRedirect(detail_url(*self._split_object_id(object_id)))

    # ----------------------------------------------------------------------- confirmation

    def render_confirmation(self, request: HttpRequest, *, crumb: str, question: str,
                            rows: list[LockRow], hidden: list[tuple[str, str]]) -> HttpResponse:
        """The confirmation page of force release and purge (as delete_selected's): it
        posts ``hidden`` back to the same URL with ``post=yes``."""
        context = self._context(request, f"{crumb}: are you sure?", crumb=crumb, question=question,
                                rows=rows, hidden=hidden)
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.confirmation_template, context)

    # ----------------------------------------------------------------------- force release

    @admin.action(permissions=["force_release"], description="Force release selected %(verbose_name_plural)s")
    def force_release(self, request: HttpRequest, rows: LockRows) -> HttpResponse | None:
        """Release the selected holders, after a confirmation page."""
        confirmed = request.POST.get("post") == "yes"
        for alias, key in rows.missing:
            if alias in rows.errors:
                self.message_user(request, f"Could not release {key!r} on {alias}: {rows.errors[alias]}",
                                  messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Nothing released on {alias}: lock {key!r} expired or changed hands since the "
                    "page was shown (its holder is no longer the one you confirmed).",
                    messages.WARNING,
                )
        if not rows:
            if not rows.missing:
                self.message_user(request, "No locks were selected.", messages.WARNING)
            return None
        if not confirmed:
            return self.render_confirmation(
                request,
                crumb="Force release",
                question="Force-release these locks? Each is released only if it is still held by "
                         "the holder shown here; a lock that changed hands since is left alone.",
                rows=rows,
                hidden=[("action", "force_release")]
                + [(helpers.ACTION_CHECKBOX_NAME, row.pk) for row in rows],
            )
        for row in rows:
            self._force_release_one(request, row)
        return None

    def _force_release_one(self, request: HttpRequest, row: LockRow) -> None:
        user = request.user.get_username()
        try:
            # Only the holder that was shown: release by its owner token (never another
            # holder of a shared key or semaphore).
            locks[row.alias].release_lock(f"admin:{user}", row.key, owner=row.info.token)
        except LockNotHeldError:
            if row.exclusive:
                gone = (f"Nothing released on {row.alias}: lock {row.key!r} expired or changed hands "
                        "since the page was shown (its holder is no longer the one you confirmed).")
            else:
                gone = (f"Nothing released on {row.alias}: holder {row.short_token} of {row.key!r} was "
                        "released or expired since the page was shown; the key's other holders were "
                        "left alone.")
            self.message_user(request, gone, messages.WARNING)
            return
        except LockError as e:
            self.message_user(request, f"Could not release {row.key!r} on {row.alias}: {e}",
                              messages.ERROR)
            return
        logger.warning(
            "lock %r force-released from the admin by %s (alias=%s, holder token=%s, mode=%s)",
            row.key, user, row.alias, row.info.token, row.info.mode.label(),
        )
        if row.exclusive:
            self.log_change(request, LogObject(object_id(row.alias, row.key), str(row)),
                            f"Force-released the lock held by token {row.info.token}.")
            self.message_user(request, f"Released {row.key!r} on {row.alias}.", messages.SUCCESS)
            return
        self.log_change(request, LogObject(object_id(row.alias, row.key), str(row)),
                        f"Force-released the {row.info.mode.label()} holder with token "
                        f"{row.info.token}; the lock's other holders were left alone.")
        self.message_user(
            request,
            f"Released holder {row.short_token} ({row.mode_display}) of {row.key!r} on {row.alias}; "
            "its other holders are untouched.",
            messages.SUCCESS,
        )

    def _changelist_for_post(self, request: HttpRequest) -> str:
        """The preamble of the views that release or purge: PermissionDenied without the
        view and force_release permissions; the changelist's URL (where a GET goes back to)."""
        if not (self.has_view_permission(request) and self.has_force_release_permission(request)):
            raise PermissionDenied
        return reverse("admin:django_locks_lock_changelist")

    def force_release_view(self, request: HttpRequest) -> HttpResponse:
        """The force_release action at a URL of its own: the detail page's button posts here."""
        changelist = self._changelist_for_post(request)
        if request.method != "POST":
            return HttpResponseRedirect(changelist)
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        # The selected holders' keys only, never every lock held.
        keys = dict.fromkeys(parsed[:2] for parsed in map(_parse_selected, selected)
                             if parsed is not None and parsed[0] in list(locks))
        listings = [list_alias(alias, expired=True, key=key) for alias, key in keys]
        rows = _all_rows(listings).filter(selected)
        return self.force_release(request, rows) or HttpResponseRedirect(changelist)

    def force_release_key_view(self, request: HttpRequest) -> HttpResponse:
        """Release every holder of one key (``force_release``), after the confirmation page.

        Unlike the release of a holder, this releases whoever holds the key when it is
        confirmed, holders that came after the page was shown included: the page says so.
        """
        changelist = self._changelist_for_post(request)
        if request.method != "POST":
            return HttpResponseRedirect(changelist)
        alias, key = request.POST.get("alias", ""), request.POST.get("key", "")
        if alias not in list(locks):
            raise Http404(f"no lock alias {alias!r}")
        rows = [row for row in _rows(list_alias(alias, key=key)) if row.key == key]
        if request.POST.get("post") != "yes":
            return self.render_confirmation(
                request,
                crumb="Force release every holder",
                question=f"Force-release every holder of {key} on {alias}? Whoever holds it when "
                         "you confirm is released, holders that arrived after this page was "
                         f"shown included. Held now by {len(rows)} "
                         f"holder{'s' if len(rows) != 1 else ''}:",
                rows=rows,
                hidden=[("alias", alias), ("key", key)],
            )
        backend = locks[alias]
        user = request.user.get_username()
        try:
            before = [info.token for info in backend.get_holders(key)]
            released = backend.force_release(key)
        except (TypeError, ValueError, LockError) as e:
            self.message_user(request, f"Could not release {key!r} on {alias}: {e}", messages.ERROR)
            return HttpResponseRedirect(changelist)
        if not released:
            self.message_user(request, f"Nothing released on {alias}: lock {key!r} is not held.",
                              messages.WARNING)
            return HttpResponseRedirect(changelist)
        logger.warning("lock %r force-released (every holder) from the admin by %s (alias=%s, holders=%s)",
                       key, user, alias, before)
        self.log_change(request, LogObject(object_id(alias, key), f"{alias}: {key}"),
                        f"Force-released every holder of the lock (held just before by "
                        f"{', '.join(before) or 'none seen'}).")
        self.message_user(request, f"Released every holder of {key!r} on {alias}.", messages.SUCCESS)
        return HttpResponseRedirect(changelist)

    # ----------------------------------------------------------------------- purge

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        """Purge one alias's expired lock state, after the same confirmation page."""
        changelist = self._changelist_for_post(request)
        if request.method != "POST":
            return HttpResponseRedirect(changelist)
        alias = request.POST.get("alias", "")
        if alias not in list(locks):
            raise Http404(f"no lock alias {alias!r}")
        if request.POST.get("post") != "yes":
            return self.render_confirmation(
                request,
                crumb="Purge expired locks",
                question=f"Purge the expired lock state of {alias}? Holders whose lock expired "
                         "without a release are cleared, and rows expired for over a minute are "
                         "deleted (fencing tokens keep rising).",
                rows=[row for row in _rows(list_alias(alias, expired=True)) if row.expired],
                hidden=[("alias", alias)],
            )
        try:
            purged = locks[alias].purge()
        except LockError as e:
            self.message_user(request, f"Could not purge {alias}: {e}", messages.ERROR)
            return HttpResponseRedirect(changelist)
        user = request.user.get_username()
        logger.warning("expired locks purged from the admin by %s (alias=%s, entries=%d)",
                       user, alias, purged)
        self.log_change(request, LogObject(alias, f"{alias}: expired locks"),
                        f"Purged {purged} expired lock entries.")
        self.message_user(request, f"Purged {purged} expired lock entries on {alias}.", messages.SUCCESS)
        return HttpResponseRedirect(changelist)
