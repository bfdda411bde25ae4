"""The JSON API (docs/api.md): conversations and their members; ``include("agentapp.urls.api")``."""

from django.urls import path

from .. import api_conversations, api_members

app_name = "agentapp"

urlpatterns = [
    path("api/conversations/", api_conversations.conversations, name="api_conversations"),
    path("api/conversations/<str:conversation_id>/", api_conversations.conversation, name="api_conversation"),
    path("api/conversations/<uuid:conversation_id>/members/", api_members.members, name="api_members"),
    path("api/conversations/<uuid:conversation_id>/members/<int:user_id>/", api_members.member, name="api_member"),
]
