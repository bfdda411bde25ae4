/**
 * feedback.js: thumbs up or down, with an optional comment, on each run's answer (its last assistant message).
 *
 * Feedback goes out as a `feedback` frame on the socket; `feedback` frames from every connection (and the
 * conversation frame's `feedback` list after a reconnect) update the counts. The position of a live run's answer
 * is read from the conversations API once the run finished. Comments are only ever inserted as text.
 */
import { node } from "./dom.js";

export class FeedbackBar {
  /**
   * @param {HTMLElement} root the #agentapp element with data-api-path
   * @param {(frame: object) => boolean} send sends a client frame on the socket
   */
  constructor(root, send) {
    this.apiPath = root.dataset.apiPath || "/api/conversations/";
    this.send = send;
    this.conversationId = null;
    this.canRate = false;
    this.controls = new Map(); // position -> { element, up, down, comment }
    this.ratings = new Map(); // position -> Map(user label -> entry)
  }

  /** A conversation frame arrived: forget everything, then put controls on each run's answer and show its feedback. */
  load(frame, runFor) {
    this.conversationId = frame.conversation_id;
    this.canRate = frame.role !== "viewer";
    this.controls.clear();
    this.ratings.clear();
    const answers = new Map(); // run_id -> position of its last assistant message
    for (const message of frame.messages || []) {
      if (message.role === "assistant" && message.run_id) answers.set(message.run_id, message.position);
    }
    for (const [runId, position] of answers) this.attach(runFor(runId).element, position);
    for (const entry of frame.feedback || []) this.apply(entry);
  }

  /** A run finished: find its answer's position (the API lists messages with their run) and put controls on it. */
  async runFinished(runId, element) {
    if (!this.conversationId) return;
    const conversationId = this.conversationId;
    try {
      const url = `${this.apiPath}${encodeURIComponent(conversationId)}/`;
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok || conversationId !== this.conversationId) return;
      const detail = await response.json();
      const answers = (detail.messages || []).filter((m) => m.role === "assistant" && m.run_id === runId);
      if (answers.length) this.attach(element, answers[answers.length - 1].position);
    } catch {
      // Without the position the answer has no controls until the next conversation frame.
    }
  }

  attach(element, position) {
    if (this.controls.has(position)) return;
    const bar = node("div", "feedback");
    const up = node("button", "feedback-up", "👍");
    const down = node("button", "feedback-down", "👎");
    up.type = down.type = "button";
    up.title = "Good answer";
    down.title = "Bad answer";
    const comment = node("input", "feedback-comment");
    comment.type = "text";
    comment.placeholder = "Comment (optional), Enter to send";
    comment.maxLength = 2000;
    comment.hidden = true;
    const summary = node("span", "feedback-summary");
    up.disabled = down.disabled = !this.canRate;
    up.addEventListener("click", () => this.rate(position, "up"));
    down.addEventListener("click", () => this.rate(position, "down"));
    comment.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        const control = this.controls.get(position);
        if (control.rating) this.rate(position, control.rating, comment.value);
      }
    });
    // Styled through the CSSOM (allowed under a strict style-src), so the page's stylesheet needs no change.
    Object.assign(bar.style, { display: "flex", gap: "6px", alignItems: "center", fontSize: "12px" });
    comment.style.flex = "1";
    bar.append(up, down, summary, comment);
    element.append(bar);
    this.controls.set(position, { element: bar, up, down, comment, summary, rating: null });
    this.render(position);
  }

  /** Send this user's rating; clicking the pressed thumb again takes it back. */
  rate(position, rating, text) {
    const control = this.controls.get(position);
    const again = control.rating === rating && text === undefined;
    const frame = { type: "feedback", position, rating: again ? null : rating };
    if (text !== undefined) frame.comment = text;
    if (this.send(frame)) {
      control.rating = again ? null : rating;
      control.comment.hidden = control.rating === null;
      this.render(position);
    }
  }

  /** A feedback (given, changed or taken back) from any connection. */
  apply(entry) {
    if (typeof entry?.position !== "number") return;
    const byUser = this.ratings.get(entry.position) || new Map();
    const who = entry.user_id === null ? entry.user : `#${entry.user_id}`;
    if (entry.rating) byUser.set(who, entry);
    else byUser.delete(who);
    this.ratings.set(entry.position, byUser);
    this.render(entry.position);
  }

  render(position) {
    const control = this.controls.get(position);
    if (!control) return;
    const entries = [...(this.ratings.get(position) || new Map()).values()];
    const ups = entries.filter((entry) => entry.rating === "up").length;
    const downs = entries.length - ups;
    for (const [button, rating] of [
      [control.up, "up"],
      [control.down, "down"],
    ]) {
      button.setAttribute("aria-pressed", String(control.rating === rating));
      button.style.opacity = control.rating === rating ? "1" : "0.5";
    }
    control.summary.textContent = entries.length ? `${ups} up, ${downs} down` : "";
    control.summary.title = entries
      .filter((entry) => entry.comment)
      .map((entry) => `${entry.user}: ${entry.comment}`)
      .join("\n");
  }
}
