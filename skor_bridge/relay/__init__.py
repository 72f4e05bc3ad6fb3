"""`skor-bridge relay`: deliver the bridge's Kafka topics to webhooks, as a consumer group.

The data flows like this:

    Kafka partitions -> worker (consumer group member, commits) -> partition state
    (per-key lanes, offset tracker) -> dispatch (one thread per webhook: retries, dead
    letters) -> WebhookSink

Modules: `offsets` and `lanes` are pure bookkeeping; `partitions` ties them together for
every partition a worker owns; `records` turns a Kafka record into a ChangeEvent and back
into a dead letter (`deadletter` writes those); `dispatch` drives a sink as the engine
does (submit/poll); `worker` is the consumer loop and its rebalance handling; `service` is
the process lifecycle (signals, health, metrics: `metrics`); `config` builds the one
RelayConfig from `run`'s option declarations plus the relay's own.
A relay keeps no state of its own: committed offsets live in Kafka, so any number of
replicas can run and a killed one is replaced by the group.
"""
