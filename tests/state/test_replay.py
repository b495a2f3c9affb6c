"""`Replay`: a run's snapshot at any event, rebuilt from the journalled texts, and its
checkpoint state."""

from __future__ import annotations

import json
from typing import Any

from trio_ws.state.replay import LOG_TAIL, Replay


def text(seq: int, kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "seq": seq, "timestamp": f"t{seq:04d}", **fields})


def agent(seq: int, index: int, state: str) -> str:
    return text(seq, "agent_update", agentIndex=index, agentName=f"A{index}", state=state)


def fed() -> Replay:
    replay = Replay()
    texts = [
        text(1, "agent_status", status="running"),
        text(2, "progress", passing=1, in_progress=0, total=4, percentage=25.0),
        agent(3, 1, "working"),
        agent(4, 0, "working"),
        agent(5, 1, "success"),
        text(6, "alert", id="a1", state="raised"),
        *[text(seq, "log", line=f"line {seq}") for seq in range(7, 7 + LOG_TAIL + 5)],
        text(200, "orchestrator_update", message="go"),
        text(201, "dev_log", line="dev"),
    ]
    for item in texts:
        replay.feed(json.loads(item)["seq"], item)
    return replay


def test_the_snapshot_comes_in_the_live_order_with_the_log_tail() -> None:
    replay = fed()
    messages = [json.loads(item.text) for item in replay.messages()]
    kinds = [m["type"] for m in messages]
    assert kinds[:5] == ["agent_status", "progress", "orchestrator_update", "agent_update", "alert"]
    assert messages[3]["agentIndex"] == 0  # agent 1 finished: no card
    logs = [m["line"] for m in messages if m["type"] == "log"]
    assert logs == [f"line {seq}" for seq in range(12, 7 + LOG_TAIL + 5)]
    assert kinds[-1] == "dev_log"
    assert (replay.seq, replay.timestamp) == (201, "t0201")


def test_a_checkpoint_state_gives_the_same_snapshot_and_goes_on() -> None:
    replay = fed()
    again = Replay.from_state(json.loads(json.dumps(replay.to_state())))
    assert [item.text for item in again.messages()] == [item.text for item in replay.messages()]
    again.feed(202, text(202, "agent_status", status="stopped"))
    assert json.loads(again.messages()[0].text)["status"] == "stopped"
    assert (again.seq, again.timestamp) == (202, "t0202")
