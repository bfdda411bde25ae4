"""URLs of the example site: the admin and agentapp's pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("agentapp.urls")),
]
