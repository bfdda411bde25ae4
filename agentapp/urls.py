"""HTTP routes of agentapp: include them with ``path("", include("agentapp.urls"))``."""

from django.urls import path

from . import views

app_name = "agentapp"

urlpatterns = [
    path("", views.chat, name="chat"),
]
