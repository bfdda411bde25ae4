"""The JSON API (docs/api.md, docs/usage.md): conversations (search, export), members, feedback and usage.

Include it with ``include("agentapp.urls.api")``.
"""

from django.urls import path

from .. import api_attachments, api_conversations, api_feedback, api_members, api_usage

app_name = "agentapp"

urlpatterns = [
    path("api/conversations/", api_conversations.conversations, name="api_conversations"),
    path("api/conversations/search/", api_conversations.search_conversations, name="api_search"),
    path("api/conversations/<str:conversation_id>/", api_conversations.conversation, name="api_conversation"),
    path(
        "api/conversations/<uuid:conversation_id>/export.json",
        api_conversations.export,
        {"kind": "json"},
        name="api_export_json",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/export.md",
        api_conversations.export,
        {"kind": "md"},
        name="api_export_md",
    ),
    path("api/conversations/<uuid:conversation_id>/members/", api_members.members, name="api_members"),
    path("api/conversations/<uuid:conversation_id>/members/<int:user_id>/", api_members.member, name="api_member"),
    path("api/conversations/<uuid:conversation_id>/feedback/", api_feedback.feedback_view, name="api_feedback"),
    path(
        "api/conversations/<uuid:conversation_id>/attachments/",
        api_attachments.upload,
        name="api_attachments",
    ),
    path("api/attachments/<uuid:attachment_id>/", api_attachments.download, name="api_attachment"),
    path("api/usage/", api_usage.usage_view, name="api_usage"),
]
