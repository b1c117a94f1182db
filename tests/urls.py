from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("report/<int:pk>/", views.report),
    path("async-report/<int:pk>/", views.async_report),
    path("postgres-report/<int:pk>/", views.postgres_report),
    path("stream/", views.stream),
    path("boom/", views.boom),
    path("misconfigured/<int:pk>/", views.misconfigured),
    path("search/<path:q>", views.search),
    path("cbv/<int:pk>/", views.ClassBased.as_view()),
    path("deploy/", include("tests.support.deploy.urls")),  # the deployment tier (tests/support/deploy)
]
