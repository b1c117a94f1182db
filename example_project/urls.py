from django.contrib import admin
from django.urls import path

from example_project import views
from example_project.recipes.api import RebuildReportView

urlpatterns = [
    path("", views.home, name="home"),
    path("reports/<int:pk>/", views.build_report, name="build-report"),
    path("async-reports/<int:pk>/", views.build_report_async, name="build-report-async"),
    path("export/", views.export, name="export"),
    path("settings/", views.SettingsView.as_view(), name="settings"),
    path("job/", views.run_job, name="run-job"),
    path("api/reports/<int:pk>/rebuild/", RebuildReportView.as_view(), name="api-rebuild-report"),
    path("admin/", admin.site.urls),
]
