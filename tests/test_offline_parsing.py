"""The offline model reads any prompt up to MAX_PROMPT_CHARS in linear time, off the event loop, as it always read it.

The patterns it used before could backtrack for seconds on 16,000 digits or parentheses. ``OLD`` keeps them as the
reference: on short prompts (where backtracking is cheap) the linear rewrite must read every prompt the same way.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strands import Agent

from agentapp import offline_model
from agentapp.conf import DEFAULTS
from agentapp.offline_model import MAX_PLAN_PARTS, MAX_STREAM_TOKENS, OfflineModel, _decide, _plan
from agentapp.tools import calculator

MAX_PROMPT_CHARS = DEFAULTS["MAX_PROMPT_CHARS"]
# Generous next to the few milliseconds a 16,000-character prompt takes; the old patterns took 9 to 24 s.
PLANNING_SECONDS = 0.25
TOOLS = {"calculator", "http_get"}

# What the model reacts to: digits, signs, brackets, separators and the words of its phrasings.
TRIGGERS = [
    "0", "1", "7", "9", "12", "3.5", ".", "(", ")", "+", "-", "*", "/", " ", "  ", ",", "\t", "\n", "?", "!",
    "then", "and", "and then", "AND THEN", "plus", "minus", "times", "divided by", "multiplied by", "add",
    "subtract", "multiply", "multiply it by", "divide by", "by", "it", "stream", "tokens", "token",
    "square root of", "capital of", "the", "France", "United Kingdom", "call", "use", "run", "tool", "with",
    "calculator", "http_get", "{", "}", '{"url": 1}', "x", "_", "é", "٣", "squared", "cubed", "%", "percent",
    "of", "to", "from", "to the power of", "raised", "4th power", "cube root of", "what is", "calculate",
]  # fmt: skip
triggers = st.sampled_from(TRIGGERS)
# A short prompt of trigger pieces, each followed by a space or not.
short_prompts = st.lists(st.tuples(triggers, st.sampled_from(["", " "])), max_size=14).map(
    lambda pieces: "".join(piece + space for piece, space in pieces)
)


def _long_prompt(motif: str, prefix: str) -> str:
    """``prefix`` then ``motif`` repeated up to MAX_PROMPT_CHARS characters: the shape that makes patterns backtrack."""
    body = motif * (MAX_PROMPT_CHARS // max(len(motif), 1) + 1)
    return (prefix + body)[:MAX_PROMPT_CHARS]


def _planning_seconds(prompt: str) -> float:
    """CPU time the model takes to decide what ``prompt`` asks for."""
    started = time.process_time()
    _decide(prompt, [], TOOLS)
    return time.process_time() - started


### Linear time ###

# Each took from 1 s to minutes with the old patterns (except "1+", which must stay fast).
KNOWN_PROMPTS = {
    "digits": "1" * MAX_PROMPT_CHARS,
    "parentheses": "(" * MAX_PROMPT_CHARS,
    "1+": "1+" * (MAX_PROMPT_CHARS // 2),
    "spaces": " " * MAX_PROMPT_CHARS,
    "tabs": "\t" * MAX_PROMPT_CHARS,
    "open and space": "( " * (MAX_PROMPT_CHARS // 2),
    "minus open": "-(" * (MAX_PROMPT_CHARS // 2),
    "digits then spaces": "1" * 8000 + " " * 8000,
    "stream digits": "stream " + "9" * (MAX_PROMPT_CHARS - 7),
    "stream spaces": "stream" + " " * (MAX_PROMPT_CHARS - 6),
}
# Shapes aimed at the everyday phrasings (new patterns: they must be linear from the start).
NEW_PHRASING_PROMPTS = {
    "percent signs": "1%" * (MAX_PROMPT_CHARS // 2),
    "digits then percent": "1" * 8000 + "%" + " " * 7999,
    "squared": "1 squared " * (MAX_PROMPT_CHARS // 10),
    "to the power": "1 to the power of " * (MAX_PROMPT_CHARS // 18),
    "digits then to the": "9" * 8000 + " to the " * 1000,
    "multiply": "multiply 1 " * (MAX_PROMPT_CHARS // 11),
    "cube root": "cube root of " * (MAX_PROMPT_CHARS // 13),
}


@pytest.mark.parametrize(
    "prompt", [*KNOWN_PROMPTS.values(), *NEW_PHRASING_PROMPTS.values()], ids=[*KNOWN_PROMPTS, *NEW_PHRASING_PROMPTS]
)
def test_known_backtracking_prompts_are_read_in_linear_time(prompt: str) -> None:
    assert _planning_seconds(prompt) < PLANNING_SECONDS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    motif=st.lists(triggers, min_size=1, max_size=6).map("".join),
    prefix=short_prompts,
)
def test_any_long_prompt_of_trigger_characters_is_read_in_linear_time(motif: str, prefix: str) -> None:
    assert _planning_seconds(_long_prompt(motif, prefix)) < PLANNING_SECONDS


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="0123456789.()+-*/ ,\tandthe", min_size=1, max_size=400))
def test_random_long_prompts_are_read_in_linear_time(text: str) -> None:
    assert _planning_seconds(_long_prompt(text, "")) < PLANNING_SECONDS


### Same reading as before ###

# The patterns of the model before the rewrite (correct, but super-linear on long prompts).
_OLD_NUM = r"-?\d+(?:\.\d+)?"
OLD = {
    "stream": re.compile(r"\bstream\s+(\d+)\s+tokens?\b", re.IGNORECASE),
    "tool": re.compile(
        r"\b(?:call|use|run)\s+(?:the\s+)?(?P<name>[A-Za-z_]\w*)(?P<suffix>\s+tool)?"
        r"(?:\s+with\s+(?P<args>\{.*\}))?",
        re.IGNORECASE | re.DOTALL,
    ),
    "split": re.compile(r"\s*(?:,?\s*\band then\b|,?\s*\bthen\b|,\s*and\b|\band\b|,)\s*", re.IGNORECASE),
    "continue": re.compile(
        rf"^(?P<op>add|plus|subtract|minus|multiply(?:\s+it)?\s+by|times|divide(?:\s+it)?\s+by)\s+(?P<n>{_OLD_NUM})\b",
        re.IGNORECASE,
    ),
    "sqrt": re.compile(rf"\bsquare root of\s+(?P<x>{_OLD_NUM})", re.IGNORECASE),
    "phrase": re.compile(
        rf"(?P<a>{_OLD_NUM})\s+(?P<op>divided by|multiplied by|times|plus|minus)\s+(?P<b>{_OLD_NUM})", re.IGNORECASE
    ),
    "inline": re.compile(r"-?[\d.(][\d.()+\-*/ ]*[\d.)]"),
}
NEW = {
    "stream": offline_model._STREAM_RE,
    "tool": offline_model._TOOL_RE,
    "continue": offline_model._CONTINUE_RE,
    "sqrt": offline_model._SQRT_RE,
    "phrase": offline_model._PHRASE_RE,
}


def _old_inline(clause: str) -> str:
    """The first inline expression with an operator, as the old model found it."""
    for candidate in OLD["inline"].findall(clause):
        if re.search(r"[\d)]\s*[-+*/]", candidate.strip()):
            return candidate.strip()
    return ""


def _found(match: re.Match[str] | None) -> Any:
    """What a search found: its span and groups."""
    return None if match is None else (match.span(), match.groups())


@settings(max_examples=1500, deadline=None)
@given(short_prompts)
def test_the_linear_patterns_read_short_prompts_as_the_old_ones(prompt: str) -> None:
    for name, pattern in NEW.items():
        search = pattern.match if name == "continue" else pattern.search
        old_search = OLD[name].match if name == "continue" else OLD[name].search
        assert _found(search(prompt)) == _found(old_search(prompt)), name
    assert offline_model._CLAUSE_SPLIT_RE.split(prompt) == OLD["split"].split(prompt)
    assert offline_model._inline_expression(prompt) == _old_inline(prompt)


### Bounded plans ###


def test_a_prompt_asking_for_many_sums_is_answered_for_the_first_ones() -> None:
    plan = _plan("1+1, " * 100, TOOLS)

    assert len(plan.parts) == MAX_PLAN_PARTS
    assert plan.truncated


@pytest.mark.asyncio
async def test_the_answer_says_when_questions_were_left_out() -> None:
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    answer = str(await agent.invoke_async(", ".join(f"{n}+1" for n in range(MAX_PLAN_PARTS + 5)))).strip()

    assert answer.startswith("0+1 = 1, and 1+1 = 2, and ")
    assert answer.endswith(f"{MAX_PLAN_PARTS - 1}+1 = {MAX_PLAN_PARTS}. I answer at most 20 questions per prompt.")


def test_a_stream_count_of_thousands_of_digits_is_capped() -> None:
    # int() of more than 4,300 digits raises ValueError (and is slow below that): the count is capped by its length.
    assert _plan("stream " + "9" * 5000 + " tokens", TOOLS).stream_tokens == MAX_STREAM_TOKENS
    assert _plan("stream 1234567 tokens", TOOLS).stream_tokens == 1_000_000
    assert _plan("stream 123456 tokens", TOOLS).stream_tokens == 123456


def test_deeply_nested_tool_arguments_are_dropped_not_raised() -> None:
    plan = _plan('call http_get with {"a": ' + "[" * 5000 + "]" * 5000 + "}", TOOLS)

    assert plan.tool == ("http_get", {})


### Off the event loop ###


@pytest.mark.asyncio
async def test_planning_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def recording_decide(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return _decide(*args)

    monkeypatch.setattr(offline_model, "_decide", recording_decide)
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    answer = await agent.invoke_async("Calculate 2+2")

    assert str(answer).strip() == "2+2 = 4."
    assert len(threads) == 2
    assert loop_thread not in threads
