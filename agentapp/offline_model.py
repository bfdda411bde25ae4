"""A deterministic Strands model that needs no network: it plans calculator steps from the prompt.

The model reads the last user prompt and the tool results that followed it, then either asks for the next
tool call (one per model call) or streams a final text answer word by word, as Bedrock-shaped events. "Think about X"
streams reasoning before the answer, "Cite X" a citation with it, and a tool Strands forces (structured output) is
called with an input filled from its schema. In a Strands Swarm, "Hand off to NAME" calls its handoff tool.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from strands.models.model import Model
from strands.types.content import Messages
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec

from .sniffing import image_size

CALCULATOR = "calculator"
# The tool a Strands Swarm gives each of its agents to pass control to another.
HANDOFF_TOOL = "handoff_to_agent"
# Upper bound on a "Stream N tokens" request, so a prompt cannot make the model stream forever.
MAX_STREAM_TOKENS = 1_000_000
# The whole of the model's world knowledge.
CAPITALS = {
    "france": "Paris",
    "germany": "Berlin",
    "italy": "Rome",
    "spain": "Madrid",
    "japan": "Tokyo",
    "united kingdom": "London",
}
# Longest cancellation latency while pacing: sleeps are cut into slices this long.
_CANCEL_POLL_SECONDS = 0.05

### Prompt parsing ###

# Every pattern below runs in time linear in the prompt (MAX_PROMPT_CHARS is 16,000): a match may only start where
# the previous character cannot extend it (the lookbehinds), and possessive quantifiers (``++``, ``*+``) never give
# back what they took, so no run of digits, spaces or parentheses is rescanned once per character.
# A number (no possessive quantifiers here: a pattern may give digits back to match a word boundary after them).
_NUM = r"-?\d+(?:\.\d+)?"
_STREAM_RE = re.compile(r"\bstream\s++(\d++)\s++tokens?\b", re.IGNORECASE)
_TOOL_RE = re.compile(
    r"\b(?:call|use|run)\s++(?:the\s++)?(?P<name>[A-Za-z_]\w*+)(?P<suffix>\s++tool)?"
    r"(?:\s++with\s++(?P<args>\{.*\}))?",
    re.IGNORECASE | re.DOTALL,
)
# Spaces, then "and then", "then", ", and", "and" or ",", then spaces. The leading spaces are taken whole from the
# start of their run only, and after a comma only a word may follow the spaces.
_CLAUSE_SPLIT_RE = re.compile(
    r"(?:(?<!\s)\s++)?"
    r"(?:,\s*+\band then\b|\band then\b|,\s*+\bthen\b|\bthen\b|,\s*+and\b|\band\b|,)"
    r"\s*+",
    re.IGNORECASE,
)
_CONTINUE_RE = re.compile(
    rf"^(?P<op>add|plus|subtract|minus|multiply(?:\s+it)?\s+by|times|divide(?:\s+it)?\s+by)\s+(?P<n>{_NUM})\b",
    re.IGNORECASE,
)
_SQRT_RE = re.compile(rf"\bsquare root of\s+(?P<x>{_NUM})", re.IGNORECASE)
# The first number starts at a minus sign or where no digit precedes it.
_PHRASE_RE = re.compile(
    rf"(?P<a>(?:-|(?<!\d))\d++(?:\.\d++)?+)\s++(?P<op>divided by|multiplied by|times|plus|minus)\s++(?P<b>{_NUM})",
    re.IGNORECASE,
)
# "Think about X": a reasoning block, then an answer; "Cite X": an answer with a citation of the source X.
_THINK_RE = re.compile(r"\bthink\s++about\s++(?P<topic>[^.?!\n]++)", re.IGNORECASE)
_CITE_RE = re.compile(r"\bcite\s++(?P<source>[^.?!\n]++)", re.IGNORECASE)
# "Hand off to NAME": in a Strands Swarm, call its handoff tool (once) when NAME is another agent of the swarm.
_HANDOFF_RE = re.compile(r"\bhand\s*+off\s++to\s++(?P<name>[A-Za-z_]\w*+)", re.IGNORECASE)
# A number in an answer, to fill a numeric field of a structured output.
_ANSWER_NUMBER_RE = re.compile(r"(?:-|(?<!\d))\d++(?:\.\d++)?+")
_CAPITAL_RE = re.compile(r"\bcapital of\s+(?:the\s+)?(?P<country>[A-Za-z][A-Za-z ]*[A-Za-z])", re.IGNORECASE)
# Everyday phrasings (each starts at a word, or at a number no digit precedes, so each stays linear).
_LEAD_NUM = r"(?:-|(?<!\d))\d++(?:\.\d++)?+"
_VERB_RE = re.compile(
    rf"\b(?P<verb>add|subtract|multiply|divide)\s++(?P<a>{_NUM})\s++(?P<prep>to|from|by)\s++(?P<b>{_NUM})",
    re.IGNORECASE,
)
_CBRT_RE = re.compile(rf"\bcube root of\s++(?P<x>{_NUM})", re.IGNORECASE)
_PERCENT_RE = re.compile(rf"(?P<p>{_LEAD_NUM})\s*+(?:%|percent\b)\s*+of\s++(?P<x>{_NUM})", re.IGNORECASE)
_POWER_RE = re.compile(
    rf"(?P<x>{_LEAD_NUM})\s++(?:(?P<word>squared|cubed)\b|"
    rf"(?:raised\s++)?to\s++the\s++power\s++(?:of\s++)?(?P<y>{_NUM})|"
    r"to\s++the\s++(?P<nth>\d++)(?:st|nd|rd|th)\s++power\b)",
    re.IGNORECASE,
)
# Whether an unreadable prompt looked like arithmetic, to answer it with what the model can read.
_MATHS_RE = re.compile(
    r"\d|\b(?:calculate|compute|sum|product|squared?|cubed?|power|root|percent|plus|minus|times|multiply|divide"
    r"|divided|add|subtract)\b",
    re.IGNORECASE,
)
_VERBS = {("add", "to"): "{b} + {a}", ("subtract", "from"): "{b} - {a}", ("multiply", "by"): "{a} * {b}",
          ("divide", "by"): "{a} / {b}"}  # fmt: skip
HELP = (
    "I am agentapp's offline demo model, and I could not read a calculation in that. I understand arithmetic such "
    'as "15 * 23", "What is 7 squared?", "Calculate 25% of 300", "2 to the power of 10", "the square root of 16", '
    '"the cube root of 27", "Multiply 6 by 7, then add 10", as well as "the capital of France" and "Stream 50 tokens". '
    'For real answers, configure a real model with AGENTAPP["MODEL"] (see the README).'
)
# What the demo says after echoing a prompt it has no answer for.
INTRODUCTION = (
    'I am agentapp\'s offline demo model: I do arithmetic with the calculator (try "What is 7 squared?" or '
    '"Calculate 25% of 300"), name the capital of a country, and "Stream 50 tokens". For real answers, configure a '
    'real model with AGENTAPP["MODEL"] (see the README).'
)
# Inline arithmetic lives in runs of these characters; each run is read once (see ``_inline_expression``).
_ARITHMETIC_RUN_RE = re.compile(r"[\d.()+\-*/ ]++")
_ARITHMETIC_START_RE = re.compile(r"-?[\d.(]")
_HAS_OPERATOR_RE = re.compile(r"[\d)]\s*+[-+*/]")
# Facts and calculator steps planned from one prompt at most; the rest of a longer prompt is left out.
MAX_PLAN_PARTS = 20
_OPERATORS = {
    "add": "+", "plus": "+", "subtract": "-", "minus": "-", "times": "*",
    "multiplied by": "*", "multiply by": "*", "divided by": "/", "divide by": "/",
}  # fmt: skip


class OfflineModelError(RuntimeError):
    """Raised by ``OfflineModel`` when ``fail_after_tokens`` asks it to simulate a failure."""


@dataclass(frozen=True)
class _Calc:
    """One calculator step: a full expression, or an operator and operand applied to the previous result."""

    expression: str = ""
    op: str = ""
    operand: str = ""

    def build(self, previous: str) -> str:
        """Return the expression to send to the calculator, given the previous step's result."""
        if not self.op:
            return self.expression
        left = f"({previous})" if previous.startswith("-") else previous
        return f"{left} {self.op} {self.operand}"


@dataclass
class _Plan:
    """What a prompt asks for: facts and calculator steps in order, a named tool call, a token count."""

    parts: list[str | _Calc] = field(default_factory=list)
    tool: tuple[str, dict[str, Any]] | None = None
    tool_missing: str = ""
    stream_tokens: int | None = None
    # Whether the prompt asked for more than MAX_PLAN_PARTS facts and calculations (the rest is left out).
    truncated: bool = False


def _parse_clause(clause: str, has_previous: bool) -> str | _Calc | None:
    """Turn one clause into a fact sentence or a calculator step, or None if it asks for neither."""
    if (match := _VERB_RE.search(clause)) and (form := _VERBS.get((match["verb"].lower(), match["prep"].lower()))):
        return _Calc(expression=form.format(a=match["a"], b=_grouped(match["b"])))
    if (match := _CONTINUE_RE.match(clause)) and has_previous:
        op = re.sub(r"\s+it\b", "", match["op"].lower())
        return _Calc(op=_OPERATORS[re.sub(r"\s+", " ", op)], operand=match["n"])
    if match := _SQRT_RE.search(clause):
        return _Calc(expression=f"sqrt({match['x']})")
    if match := _CBRT_RE.search(clause):
        return _Calc(expression=f"cbrt({match['x']})")
    if match := _PERCENT_RE.search(clause):
        return _Calc(expression=f"{match['x']} * {match['p']} / 100")
    if match := _POWER_RE.search(clause):
        exponent = {"squared": "2", "cubed": "3"}.get((match["word"] or "").lower(), match["y"] or match["nth"])
        return _Calc(expression=f"{_grouped(match['x'])}**{_grouped(exponent)}")
    if match := _PHRASE_RE.search(clause):
        op = _OPERATORS[re.sub(r"\s+", " ", match["op"].lower())]
        return _Calc(expression=f"{match['a']} {op} {match['b']}")
    if match := _CAPITAL_RE.search(clause):
        country = match["country"]
        capital = CAPITALS.get(country.lower())
        return f"the capital of {country} is {capital}" if capital else f"I do not know the capital of {country}"
    if expression := _inline_expression(clause):
        return _Calc(expression=expression)
    return None


def _grouped(number: str) -> str:
    """A number as an operand: negative ones in parentheses ("(-3)**2" is 9, "-3**2" is -9)."""
    return f"({number})" if number.startswith("-") else number


def _inline_expression(clause: str) -> str:
    """Return the first arithmetic in ``clause`` with an operator ("(2+3)*4"), or "".

    Within a run of arithmetic characters the expression starts at the first number or "(" (with a "-" before it)
    and ends at the run's last digit, "." or ")" after that; each run is read once, so this is linear.
    """
    for run in _ARITHMETIC_RUN_RE.finditer(clause):
        text = run[0]
        if not (start := _ARITHMETIC_START_RE.search(text)):
            continue
        end = len(text[start.end() :].rstrip("(+-*/ ")) + start.end()
        candidate = text[start.start() : end].strip()
        if end > start.end() and _HAS_OPERATOR_RE.search(candidate):
            return candidate
    return ""


def _plan(prompt: str, tool_names: set[str]) -> _Plan:
    """Read what the prompt asks for; tools not in ``tool_names`` are never planned as calls."""
    plan = _Plan()
    if match := _STREAM_RE.search(prompt):
        # Past seven digits the count is over the cap anyway (and int() of thousands of digits is slow or refused).
        digits = match[1]
        plan.stream_tokens = MAX_STREAM_TOKENS if len(digits) > 7 else min(int(digits), MAX_STREAM_TOKENS)
        prompt = prompt[: match.start()] + prompt[match.end() :]
    if (match := _TOOL_RE.search(prompt)) and match["name"] != CALCULATOR:
        if match["name"] in tool_names:
            try:
                args = json.loads(match["args"] or "{}")
            except (ValueError, RecursionError):
                args = {}
            plan.tool = (match["name"], args if isinstance(args, dict) else {})
            return plan
        if match["suffix"] or match["args"]:
            plan.tool_missing = match["name"]
            return plan
    has_previous = False
    for clause in _CLAUSE_SPLIT_RE.split(prompt):
        part = _parse_clause(clause.strip(" ?.!"), has_previous)
        if part is None:
            continue
        if len(plan.parts) == MAX_PLAN_PARTS:
            plan.truncated = True
            break
        plan.parts.append(part)
        has_previous = has_previous or isinstance(part, _Calc)
    return plan


### Conversation state ###


@dataclass(frozen=True)
class _Step:
    """A tool call already made in this turn, with its result."""

    name: str
    input: dict[str, Any]
    status: str
    text: str


def _result_text(result: dict[str, Any]) -> str:
    """Join a toolResult's text and JSON items into one string."""
    pieces = []
    for item in result.get("content", []):
        if "text" in item:
            pieces.append(item["text"])
        elif "json" in item:
            pieces.append(json.dumps(item["json"]))
    return "\n".join(pieces)


def _read_turn(messages: Messages) -> tuple[str, list[_Step]]:
    """Return the last text prompt of the user and the tool steps taken since it."""
    start = 0
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] == "user" and any("text" in block for block in message["content"]):
            start = index
            break
    else:
        return "", []
    prompt = " ".join(block["text"] for block in messages[start]["content"] if "text" in block)
    uses: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for message in messages[start + 1 :]:
        for block in message["content"]:
            if "toolUse" in block:
                uses.append(dict(block["toolUse"]))
            elif "toolResult" in block:
                results[block["toolResult"]["toolUseId"]] = dict(block["toolResult"])
    steps = []
    for use in uses:
        result = results.get(use["toolUseId"], {"status": "error", "content": [{"text": "no result"}]})
        steps.append(_Step(use["name"], use.get("input") or {}, result.get("status", "success"), _result_text(result)))
    return prompt, steps


def _describe_files(messages: Messages) -> str:
    """What the last prompt carried besides text: each image's format, size and pixels, each document's name."""
    prompt = next(
        (m for m in reversed(messages) if m["role"] == "user" and any("text" in b for b in m["content"])), None
    )
    described = []
    for block in prompt["content"] if prompt else []:
        if "image" in block:
            image = block["image"]
            data = bytes(image.get("source", {}).get("bytes") or b"")
            pixels = image_size(data)
            shape = f", {pixels[0]}x{pixels[1]} pixels" if pixels else ""
            described.append(f"an image ({image.get('format')}, {len(data)} bytes{shape})")
        elif "document" in block:
            document = block["document"]
            data = bytes(document.get("source", {}).get("bytes") or b"")
            described.append(f'a document "{document.get("name")}" ({document.get("format")}, {len(data)} bytes)')
    return " and ".join(described)


def _number(text: str) -> str:
    """Format a numeric result nicely ("25.0" becomes "25"); other text is returned stripped."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return text


### Decisions ###


@dataclass(frozen=True)
class _ToolCall:
    """The next tool call the model asks for."""

    name: str
    input: dict[str, Any]


def _sentence(pieces: list[tuple[str, bool]], capitalize: bool = True) -> str:
    """Join answer pieces into one sentence; a piece flagged True continues the previous one with "then"."""
    text = pieces[0][0]
    for piece, continues in pieces[1:]:
        text += (", then " if continues else ", and ") + piece
    return (text[:1].upper() + text[1:] if capitalize else text) + "."


def _calc_answer(plan: _Plan, steps: list[_Step], tool_names: set[str]) -> _ToolCall | str:
    """Ask for the next calculator step, or answer from the results once all are in."""
    calcs = [part for part in plan.parts if isinstance(part, _Calc)]
    facts = [(part, False) for part in plan.parts if isinstance(part, str)]
    if calcs and CALCULATOR not in tool_names:
        missing = f"no calculator is available, so I cannot compute {calcs[0].build('the result')}"
        return _sentence([*facts, (missing, False)])
    done = [step for step in steps if step.name == CALCULATOR]
    results: list[tuple[str, str]] = []
    previous = ""
    for index, calc in enumerate(calcs):
        expression = calc.build(previous)
        if index >= len(done):
            return _ToolCall(CALCULATOR, {"expression": expression})
        step = done[index]
        expression = str(step.input.get("expression", expression))
        if step.status != "success":
            said = step.text.strip().rstrip(".")
            return f"I could not compute {expression}. The calculator said: {said}."
        previous = _number(step.text)
        results.append((expression, previous))
    answers = iter(results)
    pieces = []
    for part in plan.parts:
        if isinstance(part, str):
            pieces.append((part, False))
        else:
            expression, value = next(answers)
            pieces.append((f"{expression} = {value}", bool(part.op)))
    # An expression such as "sqrt(16)" keeps its case at the start of the answer.
    answer = _sentence(pieces, capitalize=isinstance(plan.parts[0], str))
    return f"{answer} I answer at most {MAX_PLAN_PARTS} questions per prompt." if plan.truncated else answer


def _decide(prompt: str, steps: list[_Step], tool_names: set[str]) -> tuple[_ToolCall | str, int | None]:
    """Return the next tool call or the final answer text, and how many tokens the answer must have."""
    plan = _plan(prompt, tool_names)
    if plan.tool:
        name, args = plan.tool
        done = [step for step in steps if step.name == name]
        if not done:
            return _ToolCall(name, args), plan.stream_tokens
        verb = "returned" if done[0].status == "success" else "failed"
        return f"{name} {verb}: {done[0].text}", plan.stream_tokens
    if plan.tool_missing:
        return f"I have no tool named {plan.tool_missing}.", plan.stream_tokens
    if plan.parts:
        return _calc_answer(plan, steps, tool_names), plan.stream_tokens
    if plan.stream_tokens is not None:
        return "", plan.stream_tokens
    if _MATHS_RE.search(prompt):
        return HELP, None
    return f"Offline model here. You said: {prompt} {INTRODUCTION}", None


@dataclass(frozen=True)
class _Turn:
    """What the model does next: the tool steps it read, and the tool call or answer (as tokens) it chose.

    ``thought`` is streamed as reasoning before the answer; ``citation`` is streamed with the answer's text.
    """

    steps: list[_Step]
    action: _ToolCall | str
    stream_tokens: int | None
    tokens: list[str]
    thought: list[str]
    citation: dict[str, Any] | None = None


def _last_answer(messages: Messages) -> str:
    """The text of the last assistant message that has text (what a structured output is made of)."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            text = "".join(block["text"] for block in message["content"] if "text" in block)
            if text:
                return text
    return ""


def _filled(schema: Any, defs: dict[str, Any], text: str, name: str, depth: int = 0) -> Any:
    """A value for a JSON schema, deterministic: strings get ``text``, numbers its last number, booleans true."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if isinstance(schema.get("$ref"), str):
        return _filled(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, text, name, depth + 1)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [option for option in schema.get(key) or [] if option.get("type") != "null"]
        if options:
            return _filled(options[0], defs, text, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    numbers = _ANSWER_NUMBER_RE.findall(text)
    if kind == "integer":
        return int(float(numbers[-1])) if numbers else 0
    if kind == "number":
        return float(numbers[-1]) if numbers else 0.0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [_filled(schema.get("items") or {"type": "string"}, defs, text, name, depth + 1)]
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {key: _filled(value, defs, text, key, depth + 1) for key, value in properties.items()}
    return text or name


def _structured_call(spec: ToolSpec, messages: Messages) -> _ToolCall:
    """The call of a structured output tool Strands forces, its input filled from the tool's schema."""
    schema = dict((spec.get("inputSchema") or {}).get("json") or {})
    defs = dict(schema.get("$defs") or schema.get("definitions") or {})
    return _ToolCall(spec["name"], _filled(schema, defs, _last_answer(messages), spec["name"]) or {})


def _handoff(prompt: str, steps: list[_Step], tool_names: set[str]) -> _ToolCall | str | None:
    """In a Swarm, "Hand off to NAME": the handoff call, then its answer; None when NAME is no other agent there.

    A Swarm lists the other agents in each agent's input as "Agent name: NAME.", so the one named does not hand on.
    """
    match = _HANDOFF_RE.search(prompt)
    if match is None or HANDOFF_TOOL not in tool_names or f"Agent name: {match['name']}." not in prompt:
        return None
    if any(step.name == HANDOFF_TOOL for step in steps):
        return f"I handed off to {match['name']}."
    return _ToolCall(HANDOFF_TOOL, {"agent_name": match["name"], "message": f"Over to you, {match['name']}."})


def _next_turn(messages: Messages, tool_names: set[str], reasoning: bool, forced: ToolSpec | None = None) -> _Turn:
    """Read the conversation and decide the next step; run in a worker thread.

    ``forced`` is the tool Strands forces (structured output): it is called, whatever the prompt.
    """
    if forced is not None:
        return _Turn([], _structured_call(forced, messages), None, [], [])
    prompt, steps = _read_turn(messages)
    if not steps and (files := _describe_files(messages)):
        answer = f"I was given {files}. You said: {prompt}"
        return _Turn(steps, answer, None, _tokens(answer), [])
    if match := _THINK_RE.search(prompt):
        topic = match["topic"].strip()
        thought = f"Let me think about {topic}: it deserves a careful answer."
        return _Turn(steps, f"I thought about {topic}.", None, _tokens(f"I thought about {topic}."), _tokens(thought))
    if match := _CITE_RE.search(prompt):
        source = match["source"].strip()
        answer = f"According to {source}, this answer has a source."
        citation = {
            "title": source,
            "location": {"documentChar": {"documentIndex": 0, "start": 0, "end": len(source)}},
            "sourceContent": [{"text": source}],
        }
        return _Turn(steps, answer, None, _tokens(answer), [], citation)
    handoff = _handoff(prompt, steps, tool_names)
    if handoff is not None:
        return _Turn(steps, handoff, None, [] if isinstance(handoff, _ToolCall) else _tokens(handoff), [])
    action, stream_tokens = _decide(prompt, steps, tool_names)
    if isinstance(action, _ToolCall):
        return _Turn(steps, action, stream_tokens, [], [])
    thought = f'The user asked "{prompt}". I have {len(steps)} tool result(s), so I answer now.' if reasoning else ""
    return _Turn(steps, action, stream_tokens, _tokens(action), _tokens(thought))


### Streaming ###


def _tokens(text: str) -> list[str]:
    """Split text into words with their trailing whitespace; the pieces join back to ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


def _fit(tokens: list[str], count: int | None) -> Iterator[str]:
    """Yield exactly ``count`` tokens: the given ones, truncated or padded with "wN " words."""
    if count is None:
        yield from tokens
        return
    for index in range(count):
        if index >= len(tokens):
            yield f"w{index} "
        elif index == len(tokens) - 1 and count > len(tokens) and not tokens[index][-1].isspace():
            yield tokens[index] + " "
        else:
            yield tokens[index]


def _count_words(messages: Messages, system_prompt: str | None) -> int:
    """Count the words of every text the model was given, as its deterministic input token count."""
    words = len((system_prompt or "").split())
    for message in messages:
        for block in message["content"]:
            if "text" in block:
                words += len(block["text"].split())
            elif "toolUse" in block:
                words += 1 + len(json.dumps(block["toolUse"].get("input", {})).split())
            elif "toolResult" in block:
                words += len(_result_text(block["toolResult"]).split())
    return words


class _Pacer:
    """Spaces tokens ``1 / tokens_per_second`` apart on a monotonic schedule, watching for cancellation."""

    def __init__(self, tokens_per_second: float, cancel_signal: threading.Event | None) -> None:
        self._interval = 1 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._cancel_signal = cancel_signal
        self._start = time.monotonic()
        self._count = 0

    def cancelled(self) -> bool:
        """Whether the caller asked the stream to stop."""
        return self._cancel_signal is not None and self._cancel_signal.is_set()

    async def wait(self) -> bool:
        """Sleep until the next token is due; return False if the stream was cancelled meanwhile."""
        self._count += 1
        if self._interval:
            due = self._start + self._count * self._interval
            while (delay := due - time.monotonic()) > 0 and not self.cancelled():
                await asyncio.sleep(min(delay, _CANCEL_POLL_SECONDS))
        return not self.cancelled()


def _forced_tool(tool_choice: Any, tool_specs: list[ToolSpec]) -> ToolSpec | None:
    """The spec of the tool a ``{"tool": {"name": ...}}`` tool choice forces, if the model was given it."""
    if not isinstance(tool_choice, dict) or not isinstance(tool_choice.get("tool"), dict):
        return None
    name = tool_choice["tool"].get("name")
    return next((spec for spec in tool_specs if spec["name"] == name), None)


class OfflineModel(Model):
    """A deterministic, network-free model for tests, demos and benchmarks."""

    def __init__(
        self,
        *,
        tokens_per_second: float = 0,
        answer_tokens: int | None = None,
        fail_after_tokens: int | None = None,
        reasoning: bool = False,
        model_id: str = "agentapp-offline",
    ) -> None:
        self.config: dict[str, Any] = {
            "tokens_per_second": tokens_per_second,
            "answer_tokens": answer_tokens,
            "fail_after_tokens": fail_after_tokens,
            "reasoning": reasoning,
            "model_id": model_id,
        }

    def update_config(self, **model_config: Any) -> None:
        """Update the configuration with the given keys."""
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        """Return the configuration dict."""
        return self.config

    def structured_output(
        self, output_model: Any, prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Refuse: the offline model cannot produce structured output."""
        raise NotImplementedError("OfflineModel does not support structured output")

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        cancel_signal: threading.Event | None = None,
        **kwargs: Any,
    ) -> AsyncIterable[StreamEvent]:
        """Stream one assistant message: a single tool call, or the final answer token by token."""
        started = time.monotonic()
        tool_names = {spec["name"] for spec in tool_specs or []}
        forced = _forced_tool(kwargs.get("tool_choice"), tool_specs or [])
        # Reading a long history and a long prompt is linear but not free: keep it off the event loop.
        turn = await asyncio.to_thread(_next_turn, messages, tool_names, self.config["reasoning"], forced)
        steps, action, stream_tokens = turn.steps, turn.action, turn.stream_tokens
        output_tokens = 0

        yield {"messageStart": {"role": "assistant"}}
        if isinstance(action, _ToolCall):
            tool_use_id = f"tooluse_{len(messages)}_{len(steps)}"
            yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": tool_use_id, "name": action.name}}}}
            yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(action.input)}}}}
            yield {"contentBlockStop": {}}
            output_tokens, stop_reason = 1, "tool_use"
        else:
            pacer = _Pacer(self.config["tokens_per_second"], cancel_signal)
            if turn.thought:
                yield {"contentBlockStart": {"start": {}}}
                for token in turn.thought:
                    if not await pacer.wait():
                        return
                    output_tokens += 1
                    yield {"contentBlockDelta": {"delta": {"reasoningContent": {"text": token}}}}
                yield {"contentBlockStop": {}}
            count = stream_tokens if stream_tokens is not None else self.config["answer_tokens"]
            fail_after = self.config["fail_after_tokens"]
            yield {"contentBlockStart": {"start": {}}}
            for index, token in enumerate(_fit(turn.tokens, count)):
                if fail_after is not None and index >= fail_after:
                    raise OfflineModelError(f"offline model failure after {fail_after} tokens")
                if not await pacer.wait():
                    return
                output_tokens += 1
                yield {"contentBlockDelta": {"delta": {"text": token}}}
            if turn.citation is not None:
                yield {"contentBlockDelta": {"delta": {"citation": turn.citation}}}
            yield {"contentBlockStop": {}}
            stop_reason = "end_turn"
        yield {"messageStop": {"stopReason": stop_reason}}

        input_tokens = await asyncio.to_thread(_count_words, messages, system_prompt)
        yield {
            "metadata": {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens,
                },
                "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
            }
        }
