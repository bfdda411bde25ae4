"""Frames and channel-layer messages as types: one TypedDict per type, the one merge rule, the message builders."""

from __future__ import annotations

import asyncio
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import broadcast, consumers, feedback, messages, protocol, runlog, titles
from agentapp.outbox import Outbox
from tests.test_outbox import GatedSocket
from tests.wsclient import Client

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
RUN = "r1"


def frame(seq: int, kind: str = protocol.DATA, text: str | None = None, **extra: Any) -> dict[str, Any]:
    """A run frame as the runner emits it."""
    built = {"type": kind, "conversation_id": "c", "run_id": RUN, "seq": seq, **extra}
    if kind == protocol.DATA:
        built[protocol.DATA] = f"w{seq} " if text is None else text
    return built


def tool_use(seq: int, tool_use_id: str, streamed: str, run_id: str = RUN) -> dict[str, Any]:
    update = {"toolUseId": tool_use_id, "name": "calculator", "input": streamed}
    return frame(seq, protocol.CURRENT_TOOL_USE, current_tool_use=update, run_id=run_id)


def spans(frames: list[dict[str, Any]]) -> list[tuple[str, int | None, int]]:
    return [(f["type"], f.get("seq_first"), f["seq"]) for f in frames]


### Checking a value against its TypedDict ###


def _typed_dicts(hint: Any) -> list[type]:
    """The TypedDicts a field's type allows: ``X``, ``X | None``, ``list[X]`` (as the list's items)."""
    if typing.is_typeddict(hint):
        return [hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return [cls for arg in typing.get_args(hint) for cls in _typed_dicts(arg)]
    return []


def assert_fits(value: Any, cls: type, where: str = "frame") -> None:
    """``value`` has every required key of ``cls``, no key it does not know, and nested TypedDicts fit too."""
    assert isinstance(value, dict), (where, value)
    keys = set(value)
    required, optional = cls.__required_keys__, cls.__optional_keys__  # type: ignore[attr-defined]
    assert required <= keys, (where, cls.__name__, required - keys)
    assert keys <= required | optional, (where, cls.__name__, keys - required - optional)
    for name, hint in typing.get_type_hints(cls).items():
        if name not in value or value[name] is None:
            continue
        if typing.get_origin(hint) is list:
            [item_hint] = typing.get_args(hint)
            for index, item in enumerate(value[name]):
                assert_fits_one(item, _typed_dicts(item_hint), f"{where}.{name}[{index}]")
        else:
            assert_fits_one(value[name], _typed_dicts(hint), f"{where}.{name}")


def assert_fits_one(value: Any, classes: list[type], where: str) -> None:
    """``value`` fits one of ``classes`` (a union of frames: the one of its ``type``); nothing to check for none."""
    if len(classes) > 1 and isinstance(value, dict) and "type" in value:
        classes = [cls for cls in classes if typing.get_type_hints(cls)["type"] == typing.Literal[value["type"]]]
        assert classes, (where, value["type"])
    failures = []
    for cls in classes:
        try:
            assert_fits(value, cls, where)
        except AssertionError as failure:
            failures.append(failure)
        else:
            return
    assert not failures, failures


def assert_frame_fits(item: dict[str, Any]) -> None:
    cls = protocol.SERVER_FRAMES[item["type"]]
    assert_fits(item, cls, item["type"])


### Every frame type has a TypedDict, and the docs describe it ###


def frame_type_constants() -> dict[str, str]:
    """protocol's server frame type constants: its public string constants but client types, codes and statuses."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if name.isupper()
        and isinstance(value, str)
        and not name.startswith(("CLIENT_", "ERR_", "STATUS_", "_"))
        and name not in ("MAX_JSON_NUMBER_CHARS",)
    }


def test_every_frame_type_constant_has_a_typed_dict_with_a_docstring_and_a_section_in_the_docs():
    constants = frame_type_constants()
    assert len(constants) == 28
    assert set(constants.values()) == set(protocol.SERVER_FRAMES)
    docs = DOCS.read_text()
    for frame_type, cls in protocol.SERVER_FRAMES.items():
        assert typing.is_typeddict(cls)
        assert typing.get_type_hints(cls)["type"] == typing.Literal[frame_type], cls
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls  # one line: when it is sent
        assert f"### `{frame_type}`" in docs, frame_type
    assert set(typing.get_args(protocol.Frame)) == set(protocol.SERVER_FRAMES.values())


def test_frames_built_from_strands_events_fit_their_types():
    names = {"t1": "calculator"}
    result = type(
        "Result", (), {"stop_reason": "end_turn", "message": {"role": "assistant", "content": [{"text": "4"}]}}
    )()
    events = [
        {"init_event_loop": True},
        {"start": True},
        {"start_event_loop": True},
        {"data": "2+2 "},
        {"current_tool_use": {"toolUseId": "t1", "name": "calculator", "input": '{"ex'}},
        {"reasoning": True, "reasoningText": "Hm"},
        {"citation": {"title": "Docs", "location": {"web": {"url": "https://x"}}}, "delta": {}},
        {"type": "tool_stream", "tool_stream_event": {"tool_use": {"toolUseId": "t1", "name": "p"}, "data": 1}},
        {"type": "something_new", "value": 1},
        {"message": {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "status": "success"}}]}},
        {"force_stop": True, "force_stop_reason": "boom"},
        {"event_loop_throttled_delay": 4},
        {"result": result},
    ]
    run = protocol.RunFrames("c", RUN)
    built = [run.frame(payload) for event in events for payload in protocol.payloads_for_event(event, names)]
    assert [f["type"] for f in built] == [
        protocol.INIT_EVENT_LOOP,
        protocol.START,
        protocol.START_EVENT_LOOP,
        protocol.DATA,
        protocol.CURRENT_TOOL_USE,
        protocol.REASONING,
        protocol.CITATION,
        protocol.TOOL_STREAM,
        protocol.RAW,
        protocol.MESSAGE,
        protocol.TOOL_RESULT,
        protocol.FORCE_STOP,
        protocol.THROTTLED,
        protocol.RESULT,
    ]
    for item in built:
        assert_frame_fits(item)
    assert_frame_fits(protocol.error_frame(None, protocol.ERR_NOT_FOUND, "No such conversation."))
    assert_frame_fits(titles.title_frame("c", "Budget"))
    given = {"position": 1, "rating": "up", "comment": "", "user_id": 7, "user": "bob", "updated": None}
    assert_frame_fits(feedback.feedback_frame("c", given))


def test_a_refused_frame_fits_too():
    """A frame with a key its type does not know is caught (so the check above can fail)."""
    with pytest.raises(AssertionError):
        assert_frame_fits({"type": protocol.PRESENCE, "conversation_id": "c", "watchers": 1, "extra": 1})
    with pytest.raises(AssertionError):
        assert_frame_fits({"type": protocol.TITLE, "conversation_id": "c"})
    with pytest.raises(AssertionError):
        assert_frame_fits(frame(0, protocol.TOOL_RESULT, tool_result={"toolUseId": "t1"}))


@pytest.fixture
def approvals(settings: Any) -> None:
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "OFFLINE_TOKENS_PER_SECOND": 0,
        "APPROVAL_TOOLS": ["calculator"],
    }


async def frames_until(client: Client, done: Any) -> list[dict[str, Any]]:
    """Frames up to the first one ``done`` accepts."""
    received = []
    while not received or not done(received[-1]):
        received.append(await client.receive())
    return received


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_every_frame_two_connections_get_fits_its_type(layer, approvals) -> None:
    user = await get_user_model().objects.acreate_user("ada", password="x")
    asker = Client(user=user)
    hello = await asker.hello()
    conversation_id = hello["conversation_id"]
    watcher = Client(f"/ws/agent/{conversation_id}/?presence=1", user=user)
    got = [hello, await watcher.hello()]

    def finished(item: dict[str, Any]) -> bool:
        return item["type"] == protocol.RUN_FINISHED

    # A run that waits for approval, a cancel that ends the wait, another wait answered by the resumed run.
    await asker.prompt("Calculate 2+2")
    got += await asker.until_finished()
    got += await frames_until(watcher, finished)
    await asker.cancel()
    for client in (asker, watcher):
        got += await frames_until(client, lambda item: item["type"] == protocol.INTERRUPT_RESOLVED)
    await asker.prompt("Calculate 3+3")
    paused = await asker.until_finished()
    got += paused + await frames_until(watcher, finished)
    [interrupt] = next(item for item in paused if item["type"] == protocol.INTERRUPT)["interrupts"]
    await asker.send({"type": "interrupt_response", "id": interrupt["id"], "decision": "approve"})
    resumed = await asker.until_finished()
    got += resumed + await frames_until(watcher, finished)
    assert resumed[-1]["status"] == protocol.STATUS_COMPLETED

    # Feedback on an answer (listed in the next connection's hello), and an error outside any run.
    third = Client(f"/ws/agent/{conversation_id}/", user=user)
    reopened = await third.hello()
    position = max(m["position"] for m in reopened["messages"] if m["role"] == "assistant")
    await asker.send({"type": "feedback", "position": position, "rating": "up", "comment": "Right."})
    for client in (asker, watcher, third):
        got += await frames_until(client, lambda item: item["type"] == protocol.FEEDBACK)
    fourth = Client(f"/ws/agent/{conversation_id}/", user=user)
    got.append(await fourth.hello())
    await asker.send({"type": "nonsense"})
    got += await frames_until(asker, lambda item: item["type"] == protocol.ERROR)

    for item in got:
        assert_frame_fits(item)
    seen = {item["type"] for item in got}
    assert seen >= {
        protocol.CONVERSATION,
        protocol.RUN_STARTED,
        protocol.DATA,
        protocol.CURRENT_TOOL_USE,
        protocol.MESSAGE,
        protocol.TOOL_RESULT,
        protocol.RESULT,
        protocol.INTERRUPT,
        protocol.INTERRUPT_RESOLVED,
        protocol.RUN_FINISHED,
        protocol.PRESENCE,
        protocol.FEEDBACK,
        protocol.ERROR,
    }, seen
    assert any(item.get("resumes") for item in got)  # run_started of a resume, with its optional keys
    assert any(item["type"] == protocol.CONVERSATION and item["feedback"] for item in got)
    for client in (asker, watcher, third, fourth):
        await client.close()


### One merge rule ###


def test_seq_span_is_seq_first_to_seq():
    assert protocol.seq_span(frame(5)) == (5, 5)
    assert protocol.seq_span(dict(frame(7), seq_first=4)) == (4, 7)
    assert protocol.seq_span({"type": protocol.RUN_FINISHED, "seq": 9}) == (9, 9)


def test_a_frame_continues_the_one_it_starts_right_after_in_its_run():
    assert protocol.continues(frame(1), frame(2))
    assert protocol.continues(dict(frame(3), seq_first=1), dict(frame(6), seq_first=4))  # merged frames
    assert not protocol.continues(frame(1), frame(3))  # a gap
    assert not protocol.continues(frame(1), dict(frame(2), run_id="r2"))  # another run
    assert not protocol.continues(frame(1), tool_use(2, "t1", "{"))
    assert not protocol.continues(frame(1, protocol.MESSAGE), frame(2, protocol.MESSAGE))
    assert protocol.continues(tool_use(1, "t1", "{"), tool_use(2, "t1", '{"a'))
    assert not protocol.continues(tool_use(1, "t1", "{"), tool_use(2, "t1", '{"a'), tool_uses=False)
    assert not protocol.continues(tool_use(1, "t1", "{"), tool_use(2, "t2", "{"))
    # A frame outside any run (no seq) never continues anything, nor is continued.
    hello = {"type": protocol.PRESENCE, "conversation_id": "c", "watchers": 1}
    assert not protocol.continues(hello, dict(hello, watchers=2))
    assert not protocol.continues(frame(1), hello)


def test_merge_into_appends_text_and_keeps_where_the_first_frame_began():
    previous, later = frame(1), frame(2)
    assert protocol.merge_into(previous, later)
    assert list(previous.items()) == [
        ("type", protocol.DATA),
        ("conversation_id", "c"),
        ("run_id", RUN),
        ("seq", 2),
        ("data", "w1 w2 "),
        ("seq_first", 1),
    ]
    assert later == frame(2)
    assert protocol.merge_into(previous, dict(frame(5, text="w3 w4 w5 "), seq_first=3))
    assert (previous["seq_first"], previous["seq"], previous["data"]) == (1, 5, "w1 w2 w3 w4 w5 ")
    assert not protocol.merge_into(previous, frame(7))
    assert previous["seq"] == 5


def test_merge_into_replaces_a_tool_use_update_in_place():
    previous = tool_use(3, "t1", "{")
    same = previous
    assert protocol.merge_into(previous, tool_use(4, "t1", '{"a'))
    assert protocol.merge_into(previous, dict(tool_use(6, "t1", '{"a": 1}'), seq_first=5))
    assert same is previous
    assert previous == dict(tool_use(6, "t1", '{"a": 1}'), seq_first=3)
    assert list(previous)[-1] == "seq_first"


def test_merge_into_stops_text_at_max_chars():
    previous = protocol.merge_start(frame(1, text="x" * 10))
    assert not protocol.merge_into(previous, frame(2), max_chars=10)
    assert previous == dict(frame(1, text="x" * 10), seq_first=1)
    assert protocol.merge_into(previous, frame(2), max_chars=11)
    assert protocol.merge_into(tool_use(1, "t1", "x" * 10), tool_use(2, "t1", "{"), max_chars=1)  # text only


def test_merge_start_copies_and_gives_text_its_seq_first():
    delta, update = frame(1), tool_use(2, "t1", "{")
    assert protocol.merge_start(delta) == dict(delta, seq_first=1) and delta == frame(1)
    assert protocol.merge_start(dict(delta, seq_first=0)) == dict(delta, seq_first=0)
    copied = protocol.merge_start(update)
    assert copied == update and copied is not update


def stream() -> list[dict[str, Any]]:
    """Deltas, tool-use updates of one tool use, a long delta, and deltas of another run."""
    return [
        frame(0),
        frame(1),
        tool_use(2, "t1", "{"),
        tool_use(3, "t1", '{"a": 1}'),
        frame(4, text="x" * runlog.MAX_MERGED_CHARS),
        frame(5),
        dict(frame(6), run_id="r2"),
    ]


def test_the_broadcast_merges_text_and_tool_uses_and_copies():
    frames = stream()
    merged = broadcast.coalesce(frames)
    assert spans(merged) == [
        (protocol.DATA, 0, 1),
        (protocol.CURRENT_TOOL_USE, 2, 3),
        (protocol.DATA, 4, 5),
        (protocol.DATA, 6, 6),
    ]
    assert frames == stream()


def test_the_run_log_merges_text_only_up_to_its_limit():
    log = runlog.RunLog(RUN)
    for item in stream()[:6]:
        log.append(item)
    assert spans(log.frames) == [
        (protocol.DATA, 0, 1),
        (protocol.CURRENT_TOOL_USE, 2, 3),
        (protocol.DATA, 4, 4),
        (protocol.DATA, 5, 5),
    ]
    assert [f["seq_first"] for f in log.frames_after(0)] == [1, 2, 4, 5]


@pytest.mark.asyncio
async def test_the_outbox_merges_text_only_and_marks_only_merged_frames():
    socket = GatedSocket()
    outbox = Outbox(socket.send, limit=100)
    assert outbox.put(frame(-1, protocol.RUN_STARTED))
    await asyncio.sleep(0)  # the writer holds the first frame at the gate; the rest queue behind it
    for item in stream():
        assert outbox.put(item)
    socket.gate.set()
    written = await socket.until(6)
    assert spans(written[1:]) == [
        (protocol.DATA, 0, 1),
        (protocol.CURRENT_TOOL_USE, None, 2),
        (protocol.CURRENT_TOOL_USE, None, 3),
        (protocol.DATA, 4, 5),
        (protocol.DATA, None, 6),
    ]
    assert written[4][protocol.DATA] == "x" * runlog.MAX_MERGED_CHARS + "w5 "
    outbox.stop()


### Channel-layer messages ###


def test_every_message_type_has_a_typed_dict_and_a_consumer_handler():
    constants = {name: value for name, value in vars(messages).items() if name.endswith("_MESSAGE_TYPE")}
    assert len(constants) == 13
    typed = {typing.get_type_hints(cls)["type"].__args__[0] for cls in typing.get_args(messages.Message)}
    assert typed == set(constants.values())
    for cls in typing.get_args(messages.Message):
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls
    # Channels dispatches ``agentapp.x`` to ``agentapp_x``: every type has its handler, every handler its type.
    handlers = {name for name in dir(consumers.AgentConsumer) if name.startswith("agentapp_")}
    assert {value.replace(".", "_") for value in constants.values()} == handlers
    for name in ("FRAME", "CANCEL", "SYNC", "REPLAY", "ACCESS", "DELETED", "PRESENCE", "REJOINED"):
        assert getattr(broadcast, f"{name}_MESSAGE_TYPE") == constants[f"{name}_MESSAGE_TYPE"]


def items(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """A message's keys and values in order: the builders keep the key order of the dicts they replace."""
    return list(message.items())


def test_builders_make_the_dicts_sent_today():
    run_frame = frame(3)
    resolved = {"type": protocol.INTERRUPT_RESOLVED, "conversation_id": "c", "run_id": RUN, "interrupt_ids": ["i"]}
    title = titles.title_frame("c", "Budget")
    given = {"position": 1, "rating": "up", "comment": "", "user_id": 7, "user": "bob", "updated": None}
    liked = feedback.feedback_frame("c", given)
    assert items(messages.frame_message(run_frame, "chan!1")) == items(
        {"type": "agentapp.frame", "frame": run_frame, "origin": "chan!1"}
    )
    assert items(messages.cancel_message()) == [("type", "agentapp.cancel")]
    assert items(messages.sync_message(RUN, 4, "s1", "chan!2", "c")) == items(
        {
            "type": "agentapp.sync",
            "run_id": RUN,
            "after": 4,
            "sync_id": "s1",
            "reply_to": "chan!2",
            "conversation_id": "c",
        }
    )
    assert items(messages.replay_message(RUN, "s1", 0, 2, [run_frame])) == items(
        {"type": "agentapp.replay", "run_id": RUN, "sync_id": "s1", "index": 0, "count": 2, "frames": [run_frame]}
    )
    assert items(messages.access_message(7, None)) == [("type", "agentapp.access"), ("user_id", 7), ("role", None)]
    assert items(messages.deleted_message()) == [("type", "agentapp.deleted")]
    assert items(messages.presence_message("p1", 2, 9)) == items(
        {"type": "agentapp.presence", "event": "count", "process": "p1", "count": 2, "number": 9}
    )
    assert items(messages.presence_query_message("p1", "q1", "chan!3")) == items(
        {"type": "agentapp.presence", "event": "query", "process": "p1", "id": "q1", "reply_to": "chan!3"}
    )
    assert items(messages.resolved_message(resolved, "chan!1")) == items(
        {"type": "agentapp.resolved", "frame": resolved, "origin": "chan!1"}
    )
    assert items(messages.title_message(title)) == [("type", "agentapp.title"), ("frame", title)]
    assert items(messages.feedback_message(liked, None)) == items(
        {"type": "agentapp.feedback", "frame": liked, "origin": None}
    )
    assert items(messages.rejoined_message()) == [("type", "agentapp.rejoined")]
    assert items(messages.requests_message()) == [("type", "agentapp.requests")]
    for message in (messages.frame_message(run_frame, "x"), messages.sync_message(RUN, -1, "s", "x", "c")):
        cls = next(
            cls
            for cls in typing.get_args(messages.Message)
            if typing.get_type_hints(cls)["type"].__args__[0] == message["type"]
        )
        assert_fits(message, cls, message["type"])
