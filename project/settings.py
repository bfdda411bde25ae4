"""Settings of the example site: embedded defaults offline, real services through environment variables.

``DATABASE_URL`` selects the database (SQLite by default), ``REDIS_URL`` the Redis channel layer
(in-memory by default; ``AGENTAPP_CHANNEL_LAYER=pubsub`` picks the pub/sub layer), and
``AGENTAPP_MODEL=bedrock`` with the usual AWS variables selects Amazon Bedrock.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-site-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "agentapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Connections are kept for a minute: each hop to Channels' database thread would otherwise open a new one.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Write-ahead logging, synced at checkpoints rather than on every commit: a run's few writes stay cheap.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    # A transaction takes the write lock when it begins, so one that reads, then writes, waits for another writer
    # instead of failing at once with "database is locked" (a request's own thread writes the session meanwhile).
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"

REDIS_URL = os.environ.get("REDIS_URL")
if REDIS_URL:
    _layer = os.environ.get("AGENTAPP_CHANNEL_LAYER", "core")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if _layer == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    if _layer != "pubsub":
        # The core layer keeps every message for all channels of one process in one Redis list of at most
        # ``capacity`` messages (100 by default): a process following many runs of other processes (or of workers)
        # overflows that and loses frames. Sized for thousands of concurrent runs (docs/deployment.md).
        CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = int(os.environ.get("AGENTAPP_LAYER_CAPACITY", "10000"))
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"}}

AGENTAPP = {
    "MODEL": os.environ.get("AGENTAPP_MODEL", "offline"),
    "OFFLINE_TOKENS_PER_SECOND": float(os.environ.get("AGENTAPP_OFFLINE_TPS", "40")),
    # Demo mode lets a newcomer chat without an account; keep it off in production.
    "ALLOW_ANONYMOUS": os.environ.get("AGENTAPP_DEMO", "1" if DEBUG else "0") == "1",
}
if os.environ.get("AGENTAPP_MAX_CONCURRENT_RUNS"):
    AGENTAPP["MAX_CONCURRENT_RUNS"] = int(os.environ["AGENTAPP_MAX_CONCURRENT_RUNS"])
if os.environ.get("AGENTAPP_CONVERSATIONS_PER_HOUR"):
    AGENTAPP["CONVERSATIONS_PER_HOUR"] = int(os.environ["AGENTAPP_CONVERSATIONS_PER_HOUR"])
if os.environ.get("AGENTAPP_RUN_LEASE_SECONDS"):
    AGENTAPP["RUN_LEASE_SECONDS"] = float(os.environ["AGENTAPP_RUN_LEASE_SECONDS"])
if os.environ.get("AGENTAPP_WORKER_CHANNEL"):  # runs go to `manage.py agentapp_worker` (needs REDIS_URL)
    AGENTAPP["WORKER_CHANNEL"] = os.environ["AGENTAPP_WORKER_CHANNEL"]
if os.environ.get("AGENTAPP_IF_BUSY"):
    AGENTAPP["IF_BUSY"] = os.environ["AGENTAPP_IF_BUSY"]
if os.environ.get("BEDROCK_MODEL_ID"):
    AGENTAPP["BEDROCK_MODEL_ID"] = os.environ["BEDROCK_MODEL_ID"]
if os.environ.get("AWS_REGION"):
    AGENTAPP["BEDROCK_REGION"] = os.environ["AWS_REGION"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Ordinary users log in through django.contrib.auth's views (project/urls.py), then land on the chat page.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Uploaded attachments (agentapp.attachments) go to Django's default storage, here under media/.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"agentapp": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
