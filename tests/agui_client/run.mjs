// The real @ag-ui/client HttpAgent against a live agentapp site (run by tests/test_agui_client.py).
//
// Usage: node run.mjs <base url> [chat|approval]. "chat" runs a calculator prompt on a new thread, a second prompt
// on the same thread, and a streamed prompt it aborts after the first text; "approval" runs a prompt whose tool call
// waits for approval (an interrupt) and a run that resumes it. Prints one JSON line with what it saw. The client's
// own schema validation and event verification run on every event; any warning of the client is reported.
import { HttpAgent } from "@ag-ui/client";

const [base, scenario = "chat"] = process.argv.slice(2);
const warnings = [];
for (const level of ["warn", "error"]) {
  const original = console[level];
  console[level] = (...args) => {
    warnings.push(args.map(String).join(" "));
    original(...args);
  };
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

async function run(agent, prompt, { abortAfterText = false, resume = undefined } = {}) {
  if (prompt) agent.addMessage({ id: crypto.randomUUID(), role: "user", content: prompt });
  const events = [];
  let failed = null;
  await agent.runAgent(
    { runId: crypto.randomUUID(), resume },
    {
      onEvent({ event }) {
        events.push(event);
        if (abortAfterText && event.type === "TEXT_MESSAGE_CONTENT") agent.abortRun();
      },
      onRunFailed({ error }) {
        failed = String(error);
      },
    },
  );
  return { events, failed, messages: structuredClone(agent.messages) };
}

(await jarFetch(`${base}/api/conversations/`)).body?.cancel(); // sets the csrftoken cookie

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
  console.log(JSON.stringify({ threadId: agent.threadId, paused, pending, resumed, warnings }));
  process.exit(0);
}

const agent = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
agent.subscribe(followThread);
const first = await run(agent, "What is 2+3?");
const threadId = agent.threadId;
const second = await run(agent, "Multiply 6 by 7, then add 10");

const streaming = new HttpAgent({ url: `${base}/agui/`, fetch: jarFetch });
const aborted = await run(streaming, "Stream 300 tokens", { abortAfterText: true });

console.log(
  JSON.stringify({ threadId, first, second, aborted, warnings, session: cookies.get("sessionid") ?? null }),
);
