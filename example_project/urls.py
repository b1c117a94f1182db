from django.contrib import admin
from django.urls import path

from example_project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("reports/<int:pk>/", views.build_report, name="build-report"),
    path("async-reports/<int:pk>/", views.build_report_async, name="build-report-async"),
    path("export/", views.export, name="export"),
    path("settings/", views.SettingsView.as_view(), name="settings"),
    path("job/", views.run_job, name="run-job"),
    path("admin/", admin.site.urls),
]
