"""Write cost: single-row INSERT throughput with no trigger, the durable triggers and
Skor's notify triggers, with one and with N writers.

The three configurations are run interleaved (none, durable, notify, none, ...) for several
rounds, so that drift on a shared machine (other load, checkpoints, cache warm-up) spreads
over all three instead of favouring whichever ran first. No bridge runs meanwhile: the
outbox only fills, as with Skor's triggers and nothing listening; it is emptied between runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import CAPTURE_MODES

if TYPE_CHECKING:
    from skor_bridge.tools.bench.context import Context
    from skor_bridge.tools.bench.writers import WriteRun

#: The durable triggers' target: this share of no-trigger throughput with N writers.
DURABLE_TARGET = 0.70

LABELS = {
    "none": "no trigger",
    "durable": "durable triggers (skor-bridge)",
    "notify": "notify triggers (Skor's), nothing listening",
}


def measure(ctx: Context) -> list[Row]:
    options = ctx.options
    clients_list = sorted({1, options.writers})
    runs: dict[tuple[int, str], list[WriteRun]] = {}
    installed = ""
    for round_no in range(1, options.rounds + 1):
        for clients in clients_list:
            for mode in CAPTURE_MODES:
                if mode != installed:
                    ctx.db.capture(mode)
                    installed = mode
                ctx.db.empty_for_write_run()
                run = ctx.writers.run(clients, options.seconds)
                runs.setdefault((clients, mode), []).append(run)
                ctx.progress(
                    f"write cost, round {round_no}/{options.rounds}: {_writers(clients)},"
                    f" {LABELS[mode]}: {rate(run.tps, 'tps')}"
                )
    ctx.db.capture("none")
    rows = []
    for clients in clients_list:
        base = _tps(runs[(clients, "none")])
        for mode in CAPTURE_MODES:
            tps = _tps(runs[(clients, mode)])
            ratio = tps / base if base else 0.0
            figure = f"INSERT throughput, {_writers(clients)}, {LABELS[mode]}"
            committed = sum(r.committed for r in runs[(clients, mode)])
            result = f"{rate(tps, 'tps')} = {ratio:.2f} × no trigger ({count(committed)} rows)"
            if mode == "durable" and clients == options.writers and clients > 1:
                rows.append(
                    Row(
                        figure,
                        result,
                        f">= {DURABLE_TARGET:.2f} × no trigger",
                        verdict(ratio >= DURABLE_TARGET),
                    )
                )
            else:
                rows.append(Row(figure, result))
    ctx.notes.append(
        f"Write cost: {ctx.writers.kind}, one single-row INSERT per transaction, "
        f"{options.rounds} interleaved round(s) of {options.seconds:g} s per configuration; "
        "tps is the mean over the rounds."
    )
    return rows


def _tps(runs: list[WriteRun]) -> float:
    seconds = sum(r.seconds for r in runs)
    return sum(r.committed for r in runs) / seconds if seconds else 0.0


def _writers(clients: int) -> str:
    return "1 writer" if clients == 1 else f"{clients} writers"
