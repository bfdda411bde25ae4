"""The chat page with the JSON API it calls; ``include("agentapp.urls.page")``. The page also needs the socket."""

from django.urls import path

from .. import views
from . import api

app_name = "agentapp"

urlpatterns = [
    path("", views.chat, name="chat"),
    *api.urlpatterns,
]
