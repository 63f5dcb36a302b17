"""The delivery loop rebuilds its pipeline when the control plane changes, and fails
closed when a change cannot be built."""
import asyncio

import pytest

from fleetcloak.streams.control import ControlPlane, publish_to
from fleetcloak.streams.loop import BatchLoop, LoopSettings, PipelineFailed
from fleetcloak.streams.seam import Pipeline, ProcessResult, Counts
from fleetcloak.streams.topicio import unique_name

pytestmark = pytest.mark.broker


def test_policy_change_rebuilds_then_unbuildable_change_stops(broker, new_topic):
    policies, keys, subjects = (new_topic(n, 1, {"cleanup.policy": "compact"}) for n in ("pol", "keys", "subj"))
    src = new_topic("raw", 1)
    asyncio.run(publish_to(broker, policies, {b"acme": b"v1"}))  # there before the worker starts

    async def scenario():
        built, refreshed = [], []

        def refresh(changed, snapshot):  # absorbs key entries (a keystore sync), rebuilds for the rest
            refreshed.append((changed, dict(snapshot.keys)))
            return changed == {"keys"}

        def factory(snapshot):
            if snapshot.policies.get(b"acme") == b"broken":
                raise ValueError("policy cannot be compiled")
            built.append((snapshot.version, dict(snapshot.policies)))
            return Pipeline(lambda batch: ProcessResult([], Counts(received=len(batch), dropped={("x", ""): len(batch)})),
                            refresh=refresh)

        control = ControlPlane(broker, policies_topic=policies, keys_topic=keys, subjects_topic=subjects)
        await control.start()
        loop = BatchLoop(LoopSettings(broker, input_topic=src, group_id=unique_name("grp")), factory, control=control)
        task = asyncio.create_task(loop.run())
        try:
            while not built:
                await asyncio.sleep(0.02)
            assert built[0][1] == {b"acme": b"v1"}  # caught up before the first build
            # getmany() blocks through the group join; changes are applied between batches
            await asyncio.wait_for(loop.assigned.wait(), 30)

            await publish_to(broker, policies, {b"acme": b"v2", b"zeta": b"z1"})
            for _ in range(100):
                if built[-1][1] == {b"acme": b"v2", b"zeta": b"z1"}:
                    break
                await asyncio.sleep(0.05)
            assert built[-1][1] == {b"acme": b"v2", b"zeta": b"z1"}, (built, refreshed, task.done() and task.exception())

            await publish_to(broker, policies, {b"zeta": None})  # tombstone
            for _ in range(100):
                if built[-1][1] == {b"acme": b"v2"}:
                    break
                await asyncio.sleep(0.05)
            assert built[-1][1] == {b"acme": b"v2"}

            n_built = len(built)
            await publish_to(broker, keys, {b"salt/acme/x": b"wrapped"})
            for _ in range(100):
                if refreshed and refreshed[-1][1] == {b"salt/acme/x": b"wrapped"}:
                    break
                await asyncio.sleep(0.05)
            assert refreshed[-1] == ({"keys"}, {b"salt/acme/x": b"wrapped"})
            assert len(built) == n_built  # absorbed, not rebuilt

            await publish_to(broker, policies, {b"acme": b"broken"})
            with pytest.raises(PipelineFailed, match="ValueError at test_worker_control.py"):
                await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()
            await control.stop()

    asyncio.run(scenario())
