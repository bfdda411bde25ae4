// The real @ag-ui/client HttpAgent against a live agentapp site (run by tests/test_agui_client.py).
//
// Usage: node run.mjs <base url> [chat|approval|frontend|reconnect]. "chat" runs a calculator prompt on a new thread,
// a second prompt on the same thread, and a streamed prompt it aborts after the first text; "approval" runs a prompt
// whose tool call waits for approval (an interrupt) and a run that resumes it; "frontend" declares a tool of its
// own, runs the call the agent makes of it and sends the result in the next run; "reconnect" joins a thread while a
// run streams on it (GET, through AbstractAgent.connectAgent) and again once it is over. Prints one JSON line with
// what it saw. The client's own schema validation and event verification run on every event; any warning of the
// client is reported.
import { HttpAgent, runHttpRequest, transformHttpEventStream } from "@ag-ui/client";

const [base, scenario = "chat"] = process.argv.slice(2);
const warnings = [];
for (const level of ["warn", "error"]) {
  const original = console[level];
  console[level] = (...args) => {
    warnings.push(args.map(String).join(" "));
    original(...args);
  };
}

// Print what was seen as one JSON line and exit once it is written (a large write to a pipe is asynchronous).
async function finish(seen) {
  await new Promise((resolve) => process.stdout.write(JSON.stringify(seen) + "\n", resolve));
  process.exit(0);
}

// A cookie jar for the session (anonymous demo mode) and the CSRF token, as a browser keeps them.
const cookies = new Map();
async function jarFetch(url, init = {}) {
  const headers = new Headers(init.headers);
  headers.set("Cookie", [...cookies].map(([name, value]) => `${name}=${value}`).join("; "));
  if (cookies.has("csrftoken")) headers.set("X-CSRFToken", cookies.get("csrftoken"));
  const response = await fetch(url, { ...init, headers });
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(";");
    const at = pair.indexOf("=");
    cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
  }
  return response;
}

// As docs/agui.md shows: the first run opens a conversation, and the agent keeps talking to it.
const followThread = {
  onRunStartedEvent({ event, agent }) {
    agent.threadId = event.threadId;
    agent.url = `${base}/agui/${event.threadId}/`;
  },
};

async function run(agent, prompt, { abortAfterText = false, resume = undefined, tools = [], onText = null } = {}) {
  if (prompt) agent.addMessage({ id: crypto.randomUUID(), role: "user", content: prompt });
  const events = [];
  let failed = null;
  await agent.runAgent(
    { runId: crypto.randomUUID(), resume, tools },
    {
      onEvent({ event }) {
        events.push(event);
        if (event.type === "TEXT_MESSAGE_CONTENT") {
          if (abortAfterText) agent.abortRun();
          onText?.();
          onText = null;
        }
      },
      onRunFailed({ error }) {
        failed = String(error);
      },
    },
  );
  return { events, failed, messages: structuredClone(agent.messages) };
}

(await jarFetch(`${base}/api/conversations/`)).body?.cancel(); // sets the csrftoken cookie

// HttpAgent (1.0) only runs; joining a thread is a GET of it, read as a run's events by the same pipeline.
class JoiningAgent extends HttpAgent {
  connect() {
    const init = { method: "GET", headers: { ...this.headers, Accept: "text/event-stream" } };
    return transformHttpEventStream(runHttpRequest(() => this.fetch(this.url, init)), this.debugLogger);
  }
}

async function join(threadId) {
  const agent = new JoiningAgent({ url: `${base}/agui/${threadId}/`, fetch: jarFetch, threadId });
  const events = [];
  await agent.connectAgent({}, { onEvent: ({ event }) => events.push(event) });
  return { events, messages: structuredClone(agent.messages), state: structuredClone(agent.state) };
}

if (scenario === "frontend") {
  const tools = [
    {
      name: "change_background",
      description: "Change the page's background colour.",
      parameters: { type: "object", properties: { color: { type: "string" } }, required: ["color"] },
    },
  ];
  const runTool = (name, args) => (name === "change_background" ? `The background is ${args.color}.` : null);
  const agent = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
  agent.subscribe(followThread);
  const asked = await run(agent, 'Call the change_background tool with {"color": "blue"}', { tools });
  // The client runs the calls of its own tools that have no result yet, and sends the results with the next run.
  const answered = new Set(agent.messages.filter((m) => m.role === "tool").map((m) => m.toolCallId));
  const calls = agent.messages.flatMap((m) => (m.role === "assistant" ? (m.toolCalls ?? []) : []));
  const ran = [];
  for (const call of calls.filter((c) => !answered.has(c.id))) {
    const content = runTool(call.function.name, JSON.parse(call.function.arguments));
    agent.addMessage({ id: crypto.randomUUID(), role: "tool", toolCallId: call.id, content });
    ran.push({ id: call.id, name: call.function.name, content });
  }
  const continued = await run(agent, null, { tools });
  const session = cookies.get("sessionid") ?? null;
  await finish({ threadId: agent.threadId, asked, ran, continued, warnings, session });
}

if (scenario === "reconnect") {
  const agent = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
  agent.subscribe(followThread);
  let joining = null;
  const asked = await run(agent, "Stream 1000 tokens", { onText: () => (joining = join(agent.threadId)) });
  const joined = await joining;
  const rest = await join(agent.threadId);
  await finish({ threadId: agent.threadId, asked, joined, rest, warnings });
}

if (scenario === "approval") {
  const agent = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
  agent.subscribe(followThread);
  const paused = await run(agent, "What is 2+3?");
  const pending = structuredClone(agent.pendingInterrupts);
  const answers = pending.map((interrupt) => ({
    interruptId: interrupt.id,
    status: "resolved",
    payload: { approved: true },
  }));
  const resumed = await run(agent, null, { resume: answers });
  await finish({ threadId: agent.threadId, paused, pending, resumed, warnings });
}

const agent = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
agent.subscribe(followThread);
const first = await run(agent, "What is 2+3?");
const threadId = agent.threadId;
const second = await run(agent, "Multiply 6 by 7, then add 10");

const streaming = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
const aborted = await run(streaming, "Stream 300 tokens", { abortAfterText: true });

await finish({ threadId, first, second, aborted, warnings, session: cookies.get("sessionid") ?? null });
