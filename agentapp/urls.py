"""HTTP routes of agentapp: include them with ``path("", include("agentapp.urls"))``."""

from django.urls import path

from . import api_conversations, api_members, sse, views

app_name = "agentapp"

urlpatterns = [
    path("", views.chat, name="chat"),
    path("api/conversations/", api_conversations.conversations, name="api_conversations"),
    path("api/conversations/<str:conversation_id>/", api_conversations.conversation, name="api_conversation"),
    path("sse/", sse.stream, name="sse"),
    path("sse/<uuid:conversation_id>/", sse.stream, name="sse_conversation"),
    path("api/conversations/<uuid:conversation_id>/members/", api_members.members, name="api_members"),
    path("api/conversations/<uuid:conversation_id>/members/<int:user_id>/", api_members.member, name="api_member"),
]
