/**
 * search.js: the sidebar's conversation search and the header's rename form, over the JSON API (docs/api.md).
 *
 * Search asks GET api/conversations/search/?q= as the user types (after a short pause) and lists the matches in
 * place of the recent conversations; clearing the box brings the list back. Rename sends PATCH with the new title;
 * every open page (this one too) then gets the server's ``title`` frame. Titles are inserted as text only.
 */

import { node } from "./dom.js";

const TYPING_PAUSE_MS = 250;
const SEARCH_LIMIT = 50;
const UNTITLED = "New conversation";

/** The value of a cookie, or "" when it is not set. */
function cookie(name) {
  const entry = document.cookie.split("; ").find((part) => part.startsWith(`${name}=`));
  return entry ? decodeURIComponent(entry.slice(name.length + 1)) : "";
}

/** The ``message`` of an API error answer, or a generic sentence. */
async function failure(response) {
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") return body.message;
  } catch {
    // not JSON: fall through
  }
  return `The server answered ${response.status}.`;
}

export class ConversationSearch {
  /** @param {HTMLElement} root the #agentapp element with data-search-path */
  constructor(root) {
    this.searchPath = root.dataset.searchPath || "/api/conversations/search/";
    this.input = document.getElementById("search");
    this.form = document.getElementById("search-form");
    this.recent = document.getElementById("conversations");
    this.results = document.getElementById("search-results");
    this.status = document.getElementById("search-status");
    this.timer = 0;
    this.asked = 0; // the number of the last request: answers to older ones are dropped
    this.input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.search(this.input.value.trim()), TYPING_PAUSE_MS);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      clearTimeout(this.timer);
      this.search(this.input.value.trim());
    });
  }

  async search(query) {
    const asked = ++this.asked;
    if (!query) {
      this.show(null, "");
      return;
    }
    const url = `${this.searchPath}?${new URLSearchParams({ q: query, limit: String(SEARCH_LIMIT) })}`;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (asked !== this.asked) return;
      if (!response.ok) {
        this.show([], await failure(response));
        return;
      }
      const body = await response.json();
      if (asked !== this.asked) return;
      const found = body.conversations || [];
      const more = body.count > found.length ? ` (first ${found.length} shown)` : "";
      this.show(found, body.count ? `${body.count} found${more}` : "Nothing found.");
    } catch {
      if (asked === this.asked) this.show([], "Search failed: the server could not be reached.");
    }
  }

  /** List ``found`` in place of the recent conversations; null shows the recent ones again. */
  show(found, statusText) {
    this.status.textContent = statusText;
    this.recent.hidden = found !== null;
    this.results.hidden = found === null;
    this.results.replaceChildren(
      ...(found || []).map((conversation) => {
        const link = node("a", null, conversation.title || UNTITLED);
        link.href = `?c=${encodeURIComponent(conversation.id)}`;
        link.dataset.conversationId = conversation.id;
        const item = node("li");
        item.append(link);
        return item;
      }),
    );
  }
}

export class TitleEditor {
  /**
   * @param {HTMLElement} root the #agentapp element with data-api-path and data-csrf-token
   * @param {(title: string) => void} onRenamed shows a title the server accepted
   */
  constructor(root, onRenamed) {
    this.apiPath = root.dataset.apiPath || "/api/conversations/";
    this.csrfToken = root.dataset.csrfToken || cookie("csrftoken");
    this.onRenamed = onRenamed;
    this.button = document.getElementById("rename");
    this.form = document.getElementById("rename-form");
    this.input = document.getElementById("rename-input");
    this.status = document.getElementById("rename-status");
    this.heading = document.getElementById("conversation-title");
    this.conversationId = null;
    this.allowed = false;
    this.button.addEventListener("click", () => this.setOpen(true));
    document.getElementById("rename-cancel").addEventListener("click", () => this.setOpen(false));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.rename(this.input.value.trim());
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.setOpen(false);
    });
  }

  /** Offer renaming to the owner and members of the conversation (viewers only watch). */
  update(conversationId, role) {
    this.conversationId = conversationId;
    this.allowed = role === "owner" || role === "member";
    this.setOpen(false);
  }

  setOpen(open) {
    this.form.hidden = !open;
    this.heading.hidden = open;
    this.button.hidden = open || !this.allowed;
    this.status.textContent = "";
    if (open) {
      this.input.value = this.heading.textContent;
      this.input.focus();
      this.input.select();
    }
  }

  async rename(title) {
    if (!title || !this.conversationId) return;
    try {
      const response = await fetch(`${this.apiPath}${encodeURIComponent(this.conversationId)}/`, {
        method: "PATCH",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": this.csrfToken },
        body: JSON.stringify({ title }),
      });
      if (!response.ok) {
        this.status.textContent = await failure(response);
        return;
      }
      const body = await response.json();
      this.onRenamed(body.title);
      this.setOpen(false);
    } catch {
      this.status.textContent = "Rename failed: the server could not be reached.";
    }
  }
}

/** Point the header's export links at the conversation's JSON and Markdown exports. */
export function updateExportLinks(root, conversationId) {
  const apiPath = root.dataset.apiPath || "/api/conversations/";
  for (const [id, suffix] of [["export-md", "export.md"], ["export-json", "export.json"]]) {
    const link = document.getElementById(id);
    link.href = `${apiPath}${encodeURIComponent(conversationId)}/${suffix}`;
    link.hidden = !conversationId;
  }
}
