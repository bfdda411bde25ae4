/**
 * attach.js: the attach button of the chat page and the attachments shown in the transcript.
 *
 * A chosen file is uploaded at once to the conversation's attachments endpoint (docs/api.md); the prompt then
 * names the uploaded ids (`attachments` of the `prompt` frame). Names are inserted as text; images are shown from
 * the access-checked URL the server gave, never from anything else.
 */

import { node } from "./dom.js";

/** The value of a cookie, or "" when it is not set. */
function cookie(name) {
  const entry = document.cookie.split("; ").find((part) => part.startsWith(`${name}=`));
  return entry ? decodeURIComponent(entry.slice(name.length + 1)) : "";
}

/** Only a same-origin path the server gave (/api/attachments/<id>/) is used as a link or an image source. */
function safeUrl(url) {
  return typeof url === "string" && url.startsWith("/") && !url.startsWith("//") ? url : null;
}

/** The attachments of a prompt as an element: a thumbnail per image, a download link per other file. */
export function attachmentList(refs) {
  const list = node("div", "attachments");
  for (const ref of Array.isArray(refs) ? refs : []) {
    const name = String(ref?.name ?? "file");
    const url = safeUrl(ref?.url);
    const item = node("a", "attachment", url ? undefined : name);
    if (url) {
      item.href = url;
      item.target = "_blank";
      item.rel = "noopener";
      if (String(ref.mime_type || "").startsWith("image/")) {
        const image = node("img", "attachment-thumb");
        image.src = url;
        image.alt = name;
        image.loading = "lazy";
        item.append(image);
      } else {
        item.textContent = `📄 ${name}`;
      }
    }
    item.title = name;
    list.append(item);
  }
  return list;
}

export class AttachmentPicker {
  /**
   * @param {HTMLElement} root the #agentapp element with data-api-path and data-csrf-token
   * @param {() => string | null} conversationId the current conversation's id
   * @param {() => void} changed called when an upload starts or ends (the Send button follows `busy`)
   */
  constructor(root, conversationId, changed) {
    this.apiPath = root.dataset.apiPath || "/api/conversations/";
    this.csrfToken = root.dataset.csrfToken || cookie("csrftoken");
    this.conversationId = conversationId;
    this.changed = changed;
    this.input = document.getElementById("attach-input");
    this.button = document.getElementById("attach");
    this.chips = document.getElementById("attached");
    this.status = document.getElementById("attach-status");
    this.refs = [];
    this.uploading = 0;
    this.button.addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      for (const file of this.input.files) this.upload(file);
      this.input.value = "";
    });
  }

  get busy() {
    return this.uploading > 0;
  }

  /** The ids of the uploaded files, for the next prompt. */
  ids() {
    return this.refs.map((ref) => ref.id);
  }

  /** The references of the uploaded files, to show with the prompt. */
  references() {
    return [...this.refs];
  }

  clear() {
    this.refs = [];
    this.chips.replaceChildren();
    this.status.textContent = "";
  }

  setUsable(usable) {
    this.button.disabled = !usable;
  }

  async upload(file) {
    const id = this.conversationId();
    if (!id) return;
    this.uploading += 1;
    this.status.textContent = `Uploading ${file.name}…`;
    this.changed();
    try {
      const body = new FormData();
      body.append("file", file, file.name);
      const response = await fetch(`${this.apiPath}${encodeURIComponent(id)}/attachments/`, {
        method: "POST",
        headers: { "X-CSRFToken": this.csrfToken, Accept: "application/json" },
        credentials: "same-origin",
        body,
      });
      const answer = await response.json().catch(() => null);
      if (!response.ok) throw new Error(answer?.message || `The server answered ${response.status}.`);
      this.refs.push(answer);
      const chip = node("span", "attached-file", answer.name);
      const remove = node("button", "attached-remove", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${answer.name}`);
      remove.addEventListener("click", () => {
        this.refs = this.refs.filter((ref) => ref !== answer);
        chip.remove();
      });
      chip.append(remove);
      this.chips.append(chip);
      this.status.textContent = "";
    } catch (error) {
      this.status.textContent = `${file.name}: ${error.message}`;
    } finally {
      this.uploading -= 1;
      this.changed();
    }
  }
}
