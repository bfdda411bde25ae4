/**
 * agentapp.js: a plain ES module client for the agentapp WebSocket protocol (see docs/protocol.md).
 *
 *   import { AgentSocket, websocketUrl } from "./agentapp.js";
 *   const socket = new AgentSocket();
 *   socket.onFrame((frame) => console.log(frame.type, frame));
 *   socket.connect(websocketUrl("/ws/agent/"));
 *   socket.sendPrompt("Calculate 2+2");
 *
 * It knows frames, not pages: no DOM access here.
 */

/** Close codes after which reconnecting cannot help (login required, forbidden, not found). */
export const PERMANENT_CLOSE_CODES = new Set([4401, 4403, 4404]);

/** Close code of a connection that fell too far behind: reconnect (with resume) to catch up. */
export const SLOW_CONSUMER_CLOSE_CODE = 4429;

/** Error codes a client may retry after a while, as opposed to errors in the frame it sent. */
export const RETRYABLE_ERROR_CODES = new Set(["busy", "rate_limited", "server_busy", "model_throttled"]);

/** An absolute ws:// or wss:// URL for a path on this page's host. */
export function websocketUrl(path, location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/** One logical connection to a conversation, reconnected with exponential backoff until close() is called. */
export class AgentSocket {
  /**
   * @param {object} [options]
   * @param {number} [options.minDelayMs] first reconnect delay
   * @param {number} [options.maxDelayMs] cap of the reconnect delay (doubling from minDelayMs)
   * @param {typeof WebSocket} [options.WebSocket] WebSocket implementation (for tests)
   * @param {boolean} [options.resume] reconnect with ?resume=<run_id>&seq=<n> for a run seen unfinished, to get only
   *   the frames missed (for clients that keep their state; a page that re-renders the history does not need it)
   */
  constructor({
    minDelayMs = 500,
    maxDelayMs = 10_000,
    WebSocket: Impl = globalThis.WebSocket,
    resume = false,
  } = {}) {
    this.url = null;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.Impl = Impl;
    this.ws = null;
    this.attempts = 0;
    this.closedByUser = false;
    this.timer = null;
    this.frameListeners = new Set();
    this.stateListeners = new Set();
    this.state = "idle";
    // Highest seq seen per run_id, and the runs seen without their run_finished: the resume point on reconnect.
    this.lastSeq = new Map();
    this.unfinished = new Set();
    this.resume = resume;
  }

  /** Call `callback(frame)` for every server frame; returns a function that unsubscribes. */
  onFrame(callback) {
    this.frameListeners.add(callback);
    return () => this.frameListeners.delete(callback);
  }

  /** Call `callback(state, detail)` on "connecting", "open", "waiting" (to reconnect), "refused" or "closed". */
  onState(callback) {
    this.stateListeners.add(callback);
    return () => this.stateListeners.delete(callback);
  }

  /** Open the socket (to `url`, or the last URL); later drops reconnect to the same URL. */
  connect(url = this.url) {
    this.url = url;
    this.closedByUser = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    this.setState("connecting", { attempt: this.attempts });
    const ws = new this.Impl(this.resumeUrl(url));
    this.ws = ws;
    ws.onopen = () => {
      this.attempts = 0;
      this.setState("open");
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(event);
  }

  /** Reconnect to `url` from now on (the server created a conversation: reopen that one, not a new one). */
  retarget(url) {
    this.url = url;
  }

  /** Whether frames can be sent now. */
  get isOpen() {
    return this.ws !== null && this.ws.readyState === this.Impl.OPEN;
  }

  /** Send one client frame; returns false when the socket is not open. */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Ask the agent: starts a run. */
  sendPrompt(prompt) {
    return this.send({ type: "prompt", prompt });
  }

  /** Answer a tool call waiting for approval: `decision` is "approve" or "deny", `text` an optional note. */
  answerInterrupt(interruptId, decision, text = "") {
    return this.send({ type: "interrupt_response", responses: { [interruptId]: { decision, text } } });
  }

  /** Ask for the frames of a run after `seq` (default: the last seen), then its live ones. */
  resumeRun(runId, seq = this.lastSeq.get(runId) ?? -1) {
    return this.send({ type: "resume", run_id: runId, seq });
  }

  /** `url` with the resume point of the newest unfinished run, when the resume option is on. */
  resumeUrl(url) {
    const runId = [...this.unfinished].pop();
    if (!this.resume || runId === undefined) return url;
    const target = new URL(url);
    target.searchParams.set("resume", runId);
    target.searchParams.set("seq", String(this.lastSeq.get(runId) ?? -1));
    return target.toString();
  }

  /** Stop the conversation's active run (or its wait for approval), whichever connection started it. */
  cancel() {
    return this.send({ type: "cancel" });
  }

  /** Close for good: no reconnect. */
  close() {
    this.closedByUser = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }

  /** The delay before reconnect attempt `attempt` (0-based): doubling from minDelayMs, capped, with jitter. */
  delayFor(attempt) {
    const base = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** attempt);
    return Math.round(base * (0.8 + Math.random() * 0.2));
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server only sends JSON text; anything else is not ours to interpret
    }
    if (frame === null || typeof frame !== "object") return;
    if (typeof frame.run_id === "string" && typeof frame.seq === "number") {
      const seen = this.lastSeq.get(frame.run_id) ?? -1;
      if (frame.seq > seen) {
        this.lastSeq.set(frame.run_id, frame.seq);
        if (frame.type === "run_finished") this.unfinished.delete(frame.run_id);
        else this.unfinished.add(frame.run_id);
      }
    }
    for (const listener of this.frameListeners) listener(frame);
  }

  closed(event) {
    this.ws = null;
    if (this.closedByUser) {
      this.setState("closed", { code: event.code });
    } else if (PERMANENT_CLOSE_CODES.has(event.code)) {
      this.setState("refused", { code: event.code });
    } else {
      const delay = this.delayFor(this.attempts);
      this.attempts += 1;
      this.setState("waiting", { code: event.code, delay });
      this.timer = setTimeout(() => this.connect(), delay);
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    for (const listener of this.stateListeners) listener(state, detail);
  }
}
