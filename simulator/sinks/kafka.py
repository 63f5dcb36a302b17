"""kafka://HOST:PORT — produce to telematics.raw exactly as the gateway will (DESIGN.md):

  key     the IMEI, ASCII
  value   the raw frame bytes (TCP frame or UDP datagram)
  headers received_at (ms since the epoch, ASCII), transport ("tcp" / "udp")

acks=all (Tansu breaks aiokafka on acks=0; CONVENTIONS §7). The topic is created if
missing with fleetcloak's own spec (streams/topics.py: raw_topic, 4 partitions, 7 days);
an existing topic is left as it is. The Kafka message timestamp is left to the producer
(now), NOT set to received_at: a simulated week that started days ago would otherwise
fall straight out of the raw topic's 7-day retention on Apache Kafka.

Sends are batched (`batch` messages, then await every delivery future): the truth counts
a message only once the broker has acknowledged it. aiokafka is imported here, lazily.
"""
from __future__ import annotations

import asyncio

from ..packetiser import Emission


class KafkaSink:
    def __init__(self, bootstrap: str, topic: str = "telematics.raw", batch: int = 2000):
        self.bootstrap, self.topic, self.batch = bootstrap, topic, batch
        self._pending: list[Emission] = []
        self._loop = asyncio.new_event_loop()
        self._producer = None
        self.created_topic = False
        self._loop.run_until_complete(self._start())

    async def _start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            if self.topic == "telematics.raw":
                from ...streams.topics import ensure_topics, raw_topic
                report = await ensure_topics(admin, [raw_topic()])
                self.created_topic = bool(report.created)
            elif self.topic not in await admin.list_topics():
                from aiokafka.admin import NewTopic
                await admin.create_topics([NewTopic(self.topic, 4, 1, topic_configs={
                    "retention.ms": str(7 * 86_400_000)})])
                self.created_topic = True
        finally:
            await admin.close()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                          linger_ms=5, max_batch_size=1 << 20,
                                          max_request_size=8 << 20)
        await self._producer.start()

    async def _deliver(self, ems: list[Emission]) -> None:
        send = self._producer.send
        futs = []
        for em in ems:
            futs.append(await send(self.topic, value=em.frame, key=em.imei.encode("ascii"),
                                   headers=[("received_at", str(em.received_at).encode("ascii")),
                                            ("transport", em.transport.encode("ascii"))]))
        await asyncio.gather(*futs)  # raises if any delivery failed: nothing is counted then

    def _flush(self):
        ems, self._pending = self._pending, []
        if ems:
            self._loop.run_until_complete(self._deliver(ems))
        return [(em, em.fates) for em in ems]

    def send(self, em: Emission):
        self._pending.append(em)
        if len(self._pending) >= self.batch:
            return self._flush()
        return ()

    def close(self):
        try:
            return self._flush()
        finally:
            if self._producer is not None:
                self._loop.run_until_complete(self._producer.stop())
            self._loop.close()
