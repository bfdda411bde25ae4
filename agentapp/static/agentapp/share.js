/**
 * share.js: the owner's share panel on the chat page, over the members JSON API (docs/api.md).
 *
 * Only the owner sees it (the conversation frame's role). Anonymous conversations cannot be shared: the panel
 * then says so and its form stays disabled. Usernames and server messages are inserted as text, never as HTML.
 */

import { node } from "./dom.js";

const ROLES = ["member", "viewer"];
const ANONYMOUS_NOTE = "Demo conversations belong to this browser session and cannot be shared. Log in to share.";

/** The value of a cookie, or "" when it is not set. */
function cookie(name) {
  const entry = document.cookie.split("; ").find((part) => part.startsWith(`${name}=`));
  return entry ? decodeURIComponent(entry.slice(name.length + 1)) : "";
}

export class SharePanel {
  /** @param {HTMLElement} root the #agentapp element with data-api-path, data-authenticated, data-csrf-token */
  constructor(root) {
    this.apiPath = root.dataset.apiPath || "/api/conversations/";
    this.authenticated = root.dataset.authenticated === "1";
    // The page's token works even when the project makes the cookie HttpOnly.
    this.csrfToken = root.dataset.csrfToken || cookie("csrftoken");
    this.toggle = document.getElementById("share-toggle");
    this.panel = document.getElementById("share-panel");
    this.note = document.getElementById("share-note");
    this.list = document.getElementById("share-members");
    this.form = document.getElementById("share-form");
    this.username = document.getElementById("share-username");
    this.role = document.getElementById("share-role");
    this.status = document.getElementById("share-status");
    this.conversationId = null;
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.share(this.username.value.trim(), this.role.value, true);
    });
  }

  /** Show the control to the conversation's owner only; reload the members when the conversation changed. */
  update(conversationId, role) {
    const changed = conversationId !== this.conversationId;
    this.conversationId = conversationId;
    this.toggle.hidden = role !== "owner";
    if (role !== "owner") this.setOpen(false);
    else if (changed && !this.panel.hidden) this.load();
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    if (!open) return;
    if (!this.authenticated) {
      this.note.textContent = ANONYMOUS_NOTE;
      this.setBusy(true);
      return;
    }
    this.load();
  }

  url(userId) {
    const members = `${this.apiPath}${encodeURIComponent(this.conversationId)}/members/`;
    return userId === undefined ? members : `${members}${encodeURIComponent(userId)}/`;
  }

  /** One API call; resolves to the JSON answer (null for 204), rejects with the API's message. */
  async request(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = this.csrfToken;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new Error(answer?.message || `The server answered ${response.status}.`);
    return answer;
  }

  async load() {
    try {
      const answer = await this.request("GET", this.url());
      this.render(answer.members || []);
    } catch (error) {
      this.say(error.message, true);
    }
  }

  render(members) {
    this.list.replaceChildren(...members.map((member) => this.row(member)));
    if (members.length === 0) this.list.append(node("li", "share-empty", "Not shared with anyone yet."));
  }

  row(member) {
    const item = node("li", "share-member");
    item.dataset.username = member.username;
    const role = node("select", "share-member-role");
    role.setAttribute("aria-label", `Role of ${member.username}`);
    for (const name of ROLES) {
      const option = node("option", null, name);
      option.value = name;
      role.append(option);
    }
    role.value = member.role;
    role.addEventListener("change", () => this.share(member.username, role.value));
    const remove = node("button", "share-remove", "Remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${member.username}`);
    remove.addEventListener("click", () => this.unshare(member));
    item.append(node("span", "share-name", member.username), role, remove);
    return item;
  }

  async share(username, role, fromForm = false) {
    if (!username) return;
    await this.act(async () => {
      const answer = await this.request("POST", this.url(), { username, role });
      if (fromForm) this.username.value = "";
      return `Shared with ${answer.member.username} as ${answer.member.role}.`;
    });
  }

  async unshare(member) {
    await this.act(async () => {
      await this.request("DELETE", this.url(member.user_id));
      return `${member.username} no longer has access.`;
    });
  }

  /** Run one change with the panel disabled, then say how it went and show the members as they are now. */
  async act(change) {
    this.setBusy(true);
    try {
      this.say(await change());
    } catch (error) {
      this.say(error.message, true);
    }
    await this.load();
    this.setBusy(false);
  }

  setBusy(busy) {
    for (const field of this.panel.querySelectorAll("input, select, button")) field.disabled = busy;
  }

  say(text, failed = false) {
    this.status.textContent = text;
    this.status.classList.toggle("error", failed);
  }
}
