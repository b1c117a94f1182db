from django.urls import path

from tests.support.deploy import views

urlpatterns = [
    path("ping/", views.ping),
    path("<str:alias>/sync/<str:flavor>/", views.increment),
    path("<str:alias>/async/<str:flavor>/", views.aincrement),
]
