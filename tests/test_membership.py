"""Static membership (KIP-345): a member with a stable name that a restart does not replace.

``PIPELINE_KAFKA_GROUP_INSTANCE_ID`` names the member (``{hostname}``: a StatefulSet pod's own
name). The broker then keeps the member's partitions through a restart within the session
timeout, provided the member did not leave: aiokafka sends no LeaveGroup for a static member,
and these check that the stage's own stop does not either, over a real broker through a proxy
that counts every request. (The embedded tansu broker accepts static members but keeps their
group rebalancing, see bench/rolling.py: what a restart keeps is measured there, not here.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.consumer import build_consumer
from pipeline.errors import ConfigError
from pipeline.wiring import kafka_options
from tests.plugins.environment import VALID, only_settings
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually

LEAVE_GROUP = 13


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The fewest valid settings, in a directory without a .env."""
    return only_settings(monkeypatch, tmp_path, VALID)


def test_no_instance_id_means_a_dynamic_member(env: pytest.MonkeyPatch) -> None:
    assert load_settings(env_file=None).kafka_group_instance_id is None


def test_hostname_in_the_instance_id_is_this_hosts_name(env: pytest.MonkeyPatch) -> None:
    """Under a StatefulSet the host name is the pod's name, stable across its restarts."""
    env.setenv("PIPELINE_KAFKA_GROUP_INSTANCE_ID", "space-{hostname}")

    settings = load_settings(env_file=None)

    assert f"space-{socket.gethostname()}" == settings.kafka_group_instance_id


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("space {hostname}", "not a group instance id"),
        ("space-{pod}", "the only placeholder is {hostname}"),
        ("x" * 250, "1 to 249 characters"),
        ("", "1 to 249 characters"),
    ],
)
def test_an_instance_id_the_broker_would_refuse_fails_at_start_naming_the_variable(
    env: pytest.MonkeyPatch, value: str, says: str
) -> None:
    """The broker would refuse it only at the join; the pod fails at once instead, exit 2."""
    env.setenv("PIPELINE_KAFKA_GROUP_INSTANCE_ID", value)

    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)

    (line,) = raised.value.problems
    assert line.startswith("PIPELINE_KAFKA_GROUP_INSTANCE_ID: ")
    assert says in line


async def test_the_instance_id_reaches_the_consumer(env: pytest.MonkeyPatch) -> None:
    """Parsed is not enough: aiokafka must send it in its JoinGroup (async: aiokafka builds its
    consumer inside a running loop)."""
    env.setenv("PIPELINE_KAFKA_GROUP_INSTANCE_ID", "space-0")
    consumer = build_consumer(kafka_options(load_settings(env_file=None)))
    try:
        assert "space-0" == consumer._group_instance_id
    finally:
        await consumer.stop()


async def leave_groups_of_two_members(proxied_kafka, stub, *instance_ids: str | None) -> int:
    """Run two stages in one group until both have joined, stop them gracefully, and count the
    LeaveGroup requests. Two, because aiokafka leaves only from a generation above 0, and tansu
    numbers the first generation 0: the second member's join makes the next one."""
    topic = await proxied_kafka.new_topic(2)
    first, second = (topic.settings(stub.url, kafka_group_instance_id=i) for i in instance_ids)
    async with running_stage(first) as one:
        await eventually(lambda: one.ready().ok, what="the first member joined")
        async with running_stage(second) as two:
            await eventually(lambda: two.ready().ok, what="the second member joined")
    return proxied_kafka.proxy.kafka_requests[LEAVE_GROUP]


@pytest.mark.integration
async def test_a_static_member_leaves_no_group_on_a_graceful_stop(proxied_kafka, stub) -> None:
    """A stop of a static member sends no LeaveGroup: its partitions wait for it (up to the
    session timeout) instead of moving to the other members and back when it restarts."""
    assert 0 == await leave_groups_of_two_members(proxied_kafka, stub, "space-0", "space-1")


@pytest.mark.integration
async def test_a_dynamic_member_leaves_its_group_on_a_graceful_stop(proxied_kafka, stub) -> None:
    """Without an instance id the stop does leave, at once, so the others take over without
    waiting out the session timeout (and the proxy does count what the test above expects 0 of)."""
    assert 1 <= await leave_groups_of_two_members(proxied_kafka, stub, None, None)
