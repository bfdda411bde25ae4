/**
 * chat.js: the chat page. It renders the conversation frame's history, then live frames from this
 * connection and, through the conversation group, from every other connection to the same conversation.
 *
 * A prompt sent while a run is going waits in the conversation's queue (`if_busy: "enqueue"`): the "Queued" list
 * under the transcript shows it, with a Cancel button, until it starts or leaves the queue.
 *
 * Tool output, prompts and titles are only ever inserted as text (textContent / text nodes). Assistant text is
 * Markdown, rendered and sanitized by markdown.js (raw HTML shown as text, safe links only, no images loaded).
 */
import { AgentSocket, websocketUrl } from "./agentapp.js";
import { SharePanel } from "./share.js";
import { ConversationSearch, TitleEditor, updateExportLinks } from "./search.js";
import { Drawer } from "./drawer.js";
import { node } from "./dom.js";
import { MarkdownView } from "./markdown.js";
import { FeedbackBar } from "./feedback.js";
import { AttachmentPicker, attachmentList } from "./attach.js";

const root = document.getElementById("agentapp");
const transcript = document.getElementById("transcript");
const form = document.getElementById("prompt-form");
const promptInput = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const queueButton = document.getElementById("queue-send");
const connection = document.getElementById("connection");
const titleElement = document.getElementById("conversation-title");
const conversationList = document.getElementById("conversations");
const watchersElement = document.getElementById("watchers");
const sharePanel = new SharePanel(root);
const titleEditor = new TitleEditor(root, (title) => setTitle(title));
new ConversationSearch(root);
new Drawer(root);
const feedbackBar = new FeedbackBar(root, (frame) => socket.send(frame));
const picker = new AttachmentPicker(root, () => conversationId, () => updateControls());

const websocketPath = root.dataset.websocketPath || "/ws/agent/";
const UNTITLED = "New conversation";
const TITLE_CHARS = 80; // the server titles a conversation with the first 80 characters of its first prompt
const PROMPT_PLACEHOLDER = promptInput.placeholder;
const VIEWER_PLACEHOLDER = "You can watch this conversation; its owner and members prompt.";

let conversationId = root.dataset.conversationId || null;
let conversationTitle = "";
let role = null; // this connection's role from the conversation frame: "owner", "member" or "viewer"
let ready = false; // the conversation frame arrived on the current connection
let pendingPrompt = false; // a prompt was sent and neither run_started, run_queued nor an error came back yet
let stopping = false;
const runs = new Map(); // run_id -> RunView
const activeRuns = new Set(); // run_ids started and not finished, from any connection
let pendingApproval = null; // { runId, interrupts } while a tool call waits for a human's answer
let answering = false; // an interrupt_response was sent and no run or error came back yet

// ---- Markdown rendering, at most once per animation frame ----

const staleViews = new Set(); // MarkdownViews with text not rendered yet
let renderFrame = 0;

/** Whether the transcript is scrolled to (near) its end, so new content should keep it there. */
function pinnedToEnd() {
  return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
}

/** Render a streaming text block on the next animation frame: a long answer is parsed once a frame, not per delta. */
function scheduleRender(view) {
  staleViews.add(view);
  if (!renderFrame) renderFrame = requestAnimationFrame(renderStale);
}

function renderStale() {
  renderFrame = 0;
  const pinned = pinnedToEnd();
  for (const view of staleViews) view.render();
  staleViews.clear();
  if (pinned) transcript.scrollTop = transcript.scrollHeight;
}

/** Render a text block now (it is complete, or about to be marked). */
function renderNow(view) {
  staleViews.delete(view);
  view.render();
}

// ---- DOM helpers ----

/** The readable text of content items: text as is, anything else as JSON. */
function contentText(content) {
  return (Array.isArray(content) ? content : [])
    .map((item) => {
      if (item && typeof item.text === "string") return item.text;
      if (item && "json" in item) return JSON.stringify(item.json);
      return JSON.stringify(item);
    })
    .join("\n");
}

/** Mark a text block as cut short by a cancel, a failure or a lost connection. */
function markPartial(element) {
  if (element.classList.contains("partial")) return;
  element.classList.add("partial");
  element.append(node("span", "partial-note", "stopped"));
}

/** How a citation is listed: its title, else the cited source text, else where it points. */
function citationLabel(citation) {
  if (typeof citation?.title === "string" && citation.title) return citation.title;
  const source = (citation?.sourceContent || []).map((item) => item?.text).filter((text) => typeof text === "string");
  return source.join(" ") || JSON.stringify(citation?.location ?? citation ?? null);
}

/** The text of a citationsContent block ("" for any other block). */
function citedText(block) {
  return (block?.citationsContent?.content || []).map((item) => item?.text ?? "").join("");
}

/** A tool input for display: streamed inputs are partial JSON strings, finished ones are objects. */
function inputText(input) {
  return typeof input === "string" ? input : JSON.stringify(input);
}

// ---- One run: prompt, streamed text, tool cards, status ----

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.seen = new Set(); // seqs already applied, so a frame arriving twice is shown once
    this.tools = new Map(); // toolUseId -> card parts
    this.segment = null; // the MarkdownView live text is appended to
    this.lastText = null; // the element of the latest text block
    this.streamed = 0; // text and reasoning deltas received live (a merged frame counts each delta it carries)
    this.usage = null; // the result frame's usage, when it came
    this.streamedSinceMessage = false;
    this.speaker = null; // the node of a multi-agent run speaking now (its text blocks are labelled with it)
    this.finished = false;
    this.element = node("section", "run");
    this.element.dataset.runId = runId;
    this.promptElement = node("div", "message user");
    this.promptElement.hidden = true;
    this.body = node("div", "run-body");
    this.statusElement = node("span", "run-status");
    this.usageElement = node("span", "run-usage");
    const footer = node("div", "run-footer");
    footer.append(this.statusElement, this.usageElement);
    this.element.append(this.promptElement, this.body, footer);
  }

  /** How many seqs of a frame (or of a merged range seq_first..seq) are new, 0 if none; marks them seen. */
  fresh(frame) {
    if (typeof frame.seq !== "number") return 1;
    const first = typeof frame.seq_first === "number" ? frame.seq_first : frame.seq;
    let unseen = 0;
    for (let seq = first; seq <= frame.seq; seq += 1) {
      if (!this.seen.has(seq)) {
        unseen += 1;
        this.seen.add(seq);
      }
    }
    return unseen;
  }

  setPrompt(text, attachments) {
    if (this.promptElement.hidden) {
      this.promptElement.textContent = text;
      if (Array.isArray(attachments) && attachments.length) this.promptElement.append(attachmentList(attachments));
      this.promptElement.hidden = false;
    }
  }

  /** Append Markdown to the text block being streamed, starting one if needed; it renders on the next frame. */
  appendText(text) {
    if (this.segment === null) {
      this.lastText = node("div", "message assistant");
      if (this.speaker !== null) {
        this.lastText.dataset.node = this.speaker;
        this.lastText.append(node("div", "speaker", this.speaker));
      }
      const content = node("div", "markdown");
      this.lastText.append(content);
      this.body.append(this.lastText);
      this.segment = new MarkdownView(content);
    }
    this.segment.append(text);
    scheduleRender(this.segment);
  }

  /** A node of a multi-agent run speaks (node_started, or a frame naming another node): its text gets a new block. */
  speakAs(nodeId) {
    if (typeof nodeId !== "string" || nodeId === this.speaker) return;
    this.endSegment();
    this.speaker = nodeId;
  }

  /** Close the text block being streamed; the next text starts a new one (after a tool card, say). */
  endSegment(partial = false) {
    if (this.segment === null) return;
    renderNow(this.segment);
    if (partial) markPartial(this.lastText);
    this.segment = null;
  }

  /** The run ended without completing: text it ended on was cut short (as the server saved it). */
  cutShort() {
    if (this.segment !== null) renderNow(this.segment);
    if (this.lastText !== null && this.body.lastElementChild === this.lastText) markPartial(this.lastText);
    this.segment = null;
  }

  appendReasoning(text) {
    let reasoning = this.body.lastElementChild;
    if (!reasoning || !reasoning.classList.contains("reasoning")) {
      this.endSegment();
      reasoning = node("details", "reasoning");
      reasoning.append(node("summary", null, "Reasoning"), node("div", "reasoning-text"));
      this.body.append(reasoning);
    }
    reasoning.lastElementChild.append(document.createTextNode(text));
  }

  /** A citation of the text streamed last: listed under that text, as text only (its title or cited source). */
  addCitation(citation) {
    const holder = this.lastText ?? this.body;
    let list = holder.querySelector(":scope > .citations");
    if (!list) {
      list = node("ol", "citations");
      holder.append(list);
    }
    list.append(node("li", "citation", citationLabel(citation)));
  }

  /** A running tool's latest progress (a tool_stream frame), shown on its card. */
  toolProgress({ toolUseId, name, data }) {
    const card = this.toolUse({ toolUseId, name });
    if (!card.progress) {
      card.progress = node("div", "tool-progress");
      card.input.after(card.progress);
    }
    card.progress.textContent = typeof data === "string" ? data : JSON.stringify(data);
  }

  /** The card of a tool call, created on first sight and updated as the input arrives. */
  toolUse({ toolUseId, name, input }) {
    let card = this.tools.get(toolUseId);
    if (!card) {
      this.endSegment();
      card = {
        element: node("div", "tool-card running"),
        name: node("span", "tool-name"),
        status: node("span", "tool-status", "running"),
        input: node("pre", "tool-input"),
        result: node("pre", "tool-result"),
      };
      card.element.dataset.toolUseId = toolUseId;
      card.result.hidden = true;
      const head = node("div", "tool-head");
      head.append(card.name, card.status);
      card.element.append(head, card.input, card.result);
      this.body.append(card.element);
      this.tools.set(toolUseId, card);
    }
    if (name) card.name.textContent = name;
    if (input !== undefined && input !== "") card.input.textContent = inputText(input);
    return card;
  }

  toolResult({ toolUseId, name, status, content }) {
    const card = this.toolUse({ toolUseId, name });
    const failed = status === "error";
    card.element.classList.remove("running", "success", "error");
    card.element.classList.add(failed ? "error" : "success");
    card.status.textContent = failed ? "error" : status || "success";
    card.result.textContent = contentText(content);
    card.result.hidden = false;
  }

  /** A complete assistant message: fill in what was not streamed to us and any tool calls it makes. */
  assistantMessage(message, partial = false) {
    const text = (message.content || [])
      .map((block) => (typeof block?.text === "string" ? block.text : citedText(block)))
      .join("");
    if (text && !this.streamedSinceMessage) this.appendText(text);
    for (const block of message.content || []) {
      if (block && block.toolUse) this.toolUse(block.toolUse);
    }
    this.streamedSinceMessage = false;
    this.endSegment(partial);
  }

  note(text, className = "run-note") {
    this.endSegment();
    this.body.append(node("div", className, text));
  }

  /** A card per tool call waiting for approval, with Approve and Deny buttons that answer it. */
  showApprovals(interrupts) {
    this.endSegment();
    for (const interrupt of interrupts) {
      if (this.element.querySelector(`.approval[data-interrupt-id="${CSS.escape(interrupt.id)}"]`)) continue;
      const card = node("div", "approval");
      card.dataset.interruptId = interrupt.id;
      const head = node("div", "approval-head", `Approval needed: ${interrupt.tool || interrupt.name}`);
      const reason = node("div", "approval-reason", typeof interrupt.reason === "string" ? interrupt.reason : "");
      const input = node("pre", "approval-input", inputText(interrupt.input ?? ""));
      const approve = node("button", "approve", "Approve");
      const deny = node("button", "deny", "Deny");
      for (const [button, decision] of [[approve, "approve"], [deny, "deny"]]) {
        button.type = "button";
        button.addEventListener("click", () => answer(interrupt.id, decision));
      }
      const actions = node("div", "approval-actions");
      actions.append(approve, deny);
      card.append(head, reason, input, actions);
      this.body.append(card);
    }
  }

  /** The wait for approval ended: the buttons go, the card says how. */
  resolveApprovals(outcome) {
    for (const card of this.element.querySelectorAll(".approval")) {
      card.querySelector(".approval-actions")?.remove();
      card.dataset.outcome = outcome;
      card.append(node("div", "approval-outcome", outcome));
    }
  }

  setStatus(status) {
    this.statusElement.textContent = status;
    this.element.dataset.status = status;
  }

  setUsage(usage) {
    if (usage && typeof usage.totalTokens === "number") this.usage = usage;
    this.showProduced();
  }

  /**
   * What the run produced: the usage the model reported, unless it counts fewer output tokens than the deltas we
   * saw stream (a stopped model call reports no usage), then the streamed count.
   */
  showProduced() {
    const reported = typeof this.usage?.outputTokens === "number" ? this.usage.outputTokens : 0;
    if (this.usage !== null && this.streamed <= reported) {
      this.usageElement.textContent = `${this.usage.totalTokens} tokens`;
      this.usageElement.removeAttribute("title");
    } else if (this.streamed > 0) {
      this.usageElement.textContent = `${this.streamed} tokens streamed`;
      this.usageElement.title = "Counted from the streamed text: the model reported no usage for the cut-short call.";
    }
  }
}

/** The view of a run, created (and appended to the transcript) on first sight. */
function runFor(runId) {
  let run = runs.get(runId);
  if (!run) {
    run = new RunView(runId);
    runs.set(runId, run);
    transcript.append(run.element);
  }
  return run;
}

// ---- Queued prompts: stored runs waiting for the conversation's current run ----

/** The "Queued" list under the transcript: one entry per queued run, its prompt as text and a Cancel button. */
class QueueView {
  constructor(section, list, onCancel) {
    this.section = section;
    this.list = list;
    this.onCancel = onCancel;
    this.entries = new Map(); // run_id -> { element, prompt, button }
    this.usable = false;
  }

  /** Show exactly these queued runs, in order (the conversation frame's `queued`). */
  reset(queued) {
    this.entries.clear();
    this.list.replaceChildren();
    for (const item of Array.isArray(queued) ? queued : []) this.add(item.run_id, item.prompt);
    this.toggle();
  }

  /** List a queued run `position` places from the front (runs queued ahead of it); a listed run stays put. */
  add(runId, prompt, position) {
    if (typeof runId !== "string" || this.entries.has(runId)) return;
    const element = node("li", "queued-run");
    element.dataset.runId = runId;
    const button = node("button", "queued-cancel", "Cancel");
    button.type = "button";
    button.disabled = !this.usable;
    button.addEventListener("click", () => {
      if (this.onCancel(runId)) button.disabled = true; // until run_dequeued, an error or a new connection
    });
    element.append(node("span", "queued-prompt", String(prompt ?? "")), button);
    const before = Number.isInteger(position) && position >= 0 ? this.list.children[position] : undefined;
    this.list.insertBefore(element, before ?? null);
    this.entries.set(runId, { element, prompt: String(prompt ?? ""), button });
    this.toggle();
  }

  /** Take a run off the list (it started or left the queue); returns its prompt, or null if it was not listed. */
  remove(runId) {
    const entry = this.entries.get(runId);
    if (!entry) return null;
    entry.element.remove();
    this.entries.delete(runId);
    this.toggle();
    return entry.prompt;
  }

  /** Enable the Cancel buttons when frames can be sent (all of them again: a refused cancel may be retried). */
  setUsable(usable) {
    if (usable === this.usable) return;
    this.usable = usable;
    for (const { button } of this.entries.values()) button.disabled = !usable;
  }

  /** A cancel was refused: its buttons may be pressed again. */
  reenable() {
    for (const { button } of this.entries.values()) button.disabled = !this.usable;
  }

  toggle() {
    this.section.hidden = this.entries.size === 0;
  }
}

const queue = new QueueView(document.getElementById("queue"), document.getElementById("queued"), (runId) =>
  socket.send({ type: "cancel", run_id: runId }),
);

/** A queued run left the queue without running: off the list, and a refusal is said in the transcript. */
function onDequeued(frame) {
  const prompt = queue.remove(frame.run_id);
  if (frame.reason !== "refused") return;
  const shown = prompt === null ? "A queued prompt" : `The queued prompt "${prompt}"`;
  const why = `${frame.message || "it was refused"} (${frame.code || "refused"})`;
  transcript.append(node("div", "notice error queue-refused", `${shown} was not run: ${why}`));
}

// ---- History (the conversation frame) ----

function renderHistoryMessage(message) {
  const run = runFor(message.run_id || "without-run");
  const content = Array.isArray(message.content) ? message.content : [];
  if (message.role === "user") {
    const text = content.filter((block) => typeof block?.text === "string").map((block) => block.text);
    const attached = content.filter((block) => block?.attachment).map((block) => block.attachment);
    if (text.length) run.setPrompt(text.join("\n"), attached);
    for (const block of content) {
      if (block?.toolResult) run.toolResult(block.toolResult);
    }
    return;
  }
  for (const block of content) {
    if (typeof block?.text === "string") run.appendText(block.text);
    else if (block?.toolUse) run.toolUse(block.toolUse);
    else if (block?.citationsContent) {
      run.appendText(citedText(block));
      for (const citation of block.citationsContent.citations || []) run.addCitation(citation);
    }
    else if (typeof block?.reasoningContent?.reasoningText?.text === "string") {
      run.appendReasoning(block.reasoningContent.reasoningText.text);
    }
  }
  run.endSegment(Boolean(message.partial));
}

function onConversation(frame) {
  conversationId = frame.conversation_id;
  role = frame.role || null;
  ready = true;
  pendingPrompt = false;
  stopping = false;
  runs.clear();
  activeRuns.clear();
  staleViews.clear();
  transcript.replaceChildren();
  setTitle(frame.title || "");
  for (const message of frame.messages || []) renderHistoryMessage(message);
  answering = false;
  pendingApproval = null;
  if (frame.pending_approval) {
    pendingApproval = { runId: frame.pending_approval.run_id, interrupts: frame.pending_approval.interrupts };
    runFor(pendingApproval.runId).showApprovals(pendingApproval.interrupts);
  }
  feedbackBar.load(frame, runFor);
  queue.reset(frame.queued);
  transcript.scrollTop = transcript.scrollHeight;

  const url = new URL(window.location.href);
  if (url.searchParams.get("c") !== conversationId) {
    url.searchParams.set("c", conversationId);
    window.history.replaceState(null, "", url);
  }
  socket.retarget(socketUrl(conversationId));
  markCurrentInList();
  sharePanel.update(conversationId, role);
  titleEditor.update(conversationId, role);
  updateExportLinks(root, conversationId);
  promptInput.disabled = role === "viewer";
  promptInput.placeholder = role === "viewer" ? VIEWER_PLACEHOLDER : PROMPT_PLACEHOLDER;
}

/** The socket URL of a conversation (a new one without an id), asking for presence frames. */
function socketUrl(id) {
  return websocketUrl(`${websocketPath}${id ? `${encodeURIComponent(id)}/` : ""}?presence=1`);
}

function showWatchers(count) {
  watchersElement.textContent = `${count} watching`;
  watchersElement.hidden = false;
}

// ---- Sidebar and title ----

function setTitle(title) {
  conversationTitle = title;
  titleElement.textContent = title || UNTITLED;
  document.title = title ? `${title} · agentapp` : "agentapp";
  const link = listLink(conversationId);
  if (link) link.textContent = title || UNTITLED;
}

function listLink(id) {
  if (!id) return null;
  return [...conversationList.querySelectorAll("a[data-conversation-id]")].find(
    (link) => link.dataset.conversationId === id,
  );
}

function markCurrentInList() {
  let link = listLink(conversationId);
  if (!link) {
    link = node("a", null, conversationTitle || UNTITLED);
    link.href = `?c=${encodeURIComponent(conversationId)}`;
    link.dataset.conversationId = conversationId;
    const item = node("li");
    item.append(link);
    conversationList.prepend(item);
  }
  for (const other of conversationList.querySelectorAll("a[aria-current]")) other.removeAttribute("aria-current");
  link.setAttribute("aria-current", "page");
}

// ---- Live frames ----

// ---- Approvals ----

function answer(interruptId, decision) {
  if (answering || !pendingApproval) return;
  if (socket.answerInterrupt(interruptId, decision)) {
    answering = true;
    updateControls();
  }
}

function approvalResolved(runId, outcome) {
  runs.get(runId)?.resolveApprovals(outcome);
  if (pendingApproval?.runId === runId) pendingApproval = null;
  answering = false;
  stopping = false;
}

function showError(frame) {
  stopping = false;
  pendingPrompt = false;
  answering = false;
  queue.reenable();
  const notice = node("div", "notice error", `Error: ${frame.message || "unknown error"} (${frame.code || "error"})`);
  if (frame.code === "login_required" && root.dataset.loginUrl) {
    const link = node("a", null, "Log in");
    link.href = root.dataset.loginUrl;
    notice.append(" ", link);
  }
  transcript.append(notice);
}

function onRunFrame(frame) {
  const run = runFor(frame.run_id);
  const unseen = run.fresh(frame);
  if (!unseen) return;
  if (frame.type !== "run_finished" && !run.finished && !activeRuns.has(run.runId)) {
    activeRuns.add(run.runId);
    run.setStatus("running");
  }
  switch (frame.type) {
    case "run_started":
      pendingPrompt = false;
      if (frame.resumes) {
        const decisions = Object.values(frame.responses || {}).map((response) => `${response.decision}d`);
        approvalResolved(frame.resumes, [...new Set(decisions)].join(", ") || "answered");
        break;
      }
      run.setPrompt(frame.prompt, frame.attachments);
      if (!conversationTitle) setTitle(String(frame.prompt).slice(0, TITLE_CHARS));
      break;
    case "interrupt":
      pendingApproval = { runId: run.runId, interrupts: frame.interrupts || [] };
      run.showApprovals(pendingApproval.interrupts);
      break;
    case "node_started":
      run.speakAs(frame.node);
      break;
    case "node_finished":
      run.endSegment();
      break;
    case "handoff":
      run.note(`Handoff: ${(frame.from_nodes || []).join(", ")} → ${(frame.to_nodes || []).join(", ")}`);
      break;
    case "data":
      run.speakAs(frame.node);
      run.streamedSinceMessage = true;
      run.streamed += unseen;
      run.appendText(frame.data);
      break;
    case "reasoning":
      run.speakAs(frame.node);
      run.streamed += unseen;
      run.appendReasoning(frame.reasoningText);
      break;
    case "current_tool_use":
      run.toolUse(frame.current_tool_use);
      break;
    case "citation":
      run.addCitation(frame.citation);
      break;
    case "tool_stream":
      run.toolProgress(frame.tool_stream);
      break;
    case "message":
      if (frame.message?.role === "assistant") {
        run.speakAs(frame.node);
        run.assistantMessage(frame.message);
      }
      break;
    case "tool_result":
      run.toolResult(frame.tool_result);
      break;
    case "result":
      run.setUsage(frame.result?.usage);
      break;
    case "force_stop":
      run.note(`Stopped: ${frame.force_stop_reason || "the agent loop was stopped"}`);
      break;
    case "event_loop_throttled_delay":
      run.note(`The model is throttling requests; retrying in ${frame.event_loop_throttled_delay} s.`);
      break;
    case "error":
      run.note(`Error: ${frame.message} (${frame.code})`, "run-error error");
      break;
    case "run_finished":
      if (frame.status === "completed") run.endSegment();
      else run.cutShort();
      run.finished = true;
      run.setStatus(frame.status);
      run.showProduced();
      activeRuns.delete(run.runId);
      if (activeRuns.size === 0) stopping = false;
      break;
    default:
      break; // lifecycle frames (init_event_loop, start, ...) change nothing on the page
  }
}

function onFrame(frame) {
  const pinned = pinnedToEnd();
  if (frame.type === "conversation") {
    onConversation(frame);
  } else if (frame.conversation_id && conversationId && frame.conversation_id !== conversationId) {
    return; // not this conversation's frame
  } else if (frame.type === "run_queued") {
    pendingPrompt = false;
    queue.add(frame.run_id, frame.prompt, frame.position);
  } else if (frame.type === "run_dequeued") {
    onDequeued(frame);
  } else if (typeof frame.run_id === "string" && frame.type !== "interrupt_resolved") {
    if (frame.type === "run_started" || frame.type === "run_finished") queue.remove(frame.run_id);
    onRunFrame(frame);
    if (frame.type === "run_finished") feedbackBar.runFinished(frame.run_id, runFor(frame.run_id).element);
  } else if (frame.type === "feedback") {
    feedbackBar.apply(frame.feedback);
  } else if (frame.type === "interrupt_resolved") {
    approvalResolved(frame.run_id, frame.outcome);
  } else if (frame.type === "presence") {
    showWatchers(frame.watchers);
  } else if (frame.type === "title") {
    setTitle(frame.title); // renamed on another page, through the API, or by the title generator
  } else if (frame.type === "error") {
    showError(frame);
  }
  if (pinned) transcript.scrollTop = transcript.scrollHeight;
  updateControls();
}

// ---- Connection and controls ----

const socket = new AgentSocket();

function onState(state, detail) {
  connection.dataset.state = state;
  const labels = {
    connecting: "connecting",
    open: "connected",
    waiting: `reconnecting in ${Math.ceil((detail.delay || 0) / 1000)} s`,
    refused: "disconnected",
    closed: "closed",
  };
  connection.textContent = labels[state] || state;
  if (state !== "open") {
    // Until the next conversation frame we know nothing: a dropped connection's own run is stopped by the server.
    ready = false;
    pendingPrompt = false;
    stopping = false;
    for (const runId of activeRuns) runs.get(runId)?.setStatus("connection lost");
    activeRuns.clear();
    watchersElement.hidden = true; // unknown until the next connection counts again
  }
  updateControls();
}

function updateControls() {
  // A viewer only watches: the server would answer its prompt, cancel or approval with read_only.
  const usable = ready && socket.isOpen && role !== "viewer";
  const busy = activeRuns.size > 0;
  sendButton.disabled = !usable || pendingPrompt || busy || pendingApproval !== null || picker.busy;
  picker.setUsable(usable);
  // While a run is going, Queue takes Send's place: the prompt waits for it (and for prompts queued before).
  sendButton.hidden = busy;
  queueButton.hidden = !busy;
  queueButton.disabled = !usable || pendingPrompt || !busy || pendingApproval !== null;
  queue.setUsable(usable);
  // Stop also ends a wait for approval (the tool calls get an error result).
  stopButton.disabled = !usable || stopping || (activeRuns.size === 0 && pendingApproval === null);
  for (const button of transcript.querySelectorAll(".approval button")) button.disabled = !usable || answering;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = promptInput.value;
  const button = sendButton.hidden ? queueButton : sendButton;
  if (!prompt.trim() || button.disabled) return;
  // During a run the prompt waits in the queue; otherwise it starts at once (a run another connection started a
  // moment before gets it "busy", as the server's IF_BUSY setting says), with no queue work on the server.
  const frame = button === queueButton ? { type: "prompt", prompt, if_busy: "enqueue" } : { type: "prompt", prompt };
  if (picker.ids().length) frame.attachments = picker.ids();
  if (socket.send(frame)) {
    promptInput.value = "";
    picker.clear();
    pendingPrompt = true;
    updateControls();
  }
});

promptInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => {
  if (socket.cancel()) {
    stopping = true;
    updateControls();
  }
});

socket.onFrame(onFrame);
socket.onState(onState);
socket.connect(socketUrl(conversationId));
