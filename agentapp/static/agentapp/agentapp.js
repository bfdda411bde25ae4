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
   */
  constructor({ minDelayMs = 500, maxDelayMs = 10_000, WebSocket: Impl = globalThis.WebSocket } = {}) {
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
    // Highest seq seen per run_id. Unused for now: kept so a future "resume from seq" request can send it
    // after a reconnect (the server does not support resuming yet; a reconnect gets the stored history instead).
    this.lastSeq = new Map();
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
    const ws = new this.Impl(url);
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

  /** Stop the conversation's active run, whichever connection started it. */
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
      this.lastSeq.set(frame.run_id, Math.max(frame.seq, this.lastSeq.get(frame.run_id) ?? -1));
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
