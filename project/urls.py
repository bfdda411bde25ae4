"""URLs of the example site: the admin, the login pages for ordinary users, and agentapp's pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Log in and out at /accounts/login/ and /accounts/logout/ (agentapp ships registration/login.html).
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("agentapp.urls")),
]
