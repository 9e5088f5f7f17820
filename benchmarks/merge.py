"""`feredge bench compare`: records from several devices (or runs) in one table and one plot."""
from __future__ import annotations

import time

import dataclasses

from feredge.benchmarks.harness import RECORD_VERSION
from feredge.benchmarks.records import as_records


def device_label(device: dict) -> str:
    """Short name of a device: its board if known, else host and CPU."""
    if device.get("board"):
        return device["board"]
    cpu = (device.get("cpu") or device.get("machine") or "?").replace("(R)", "").replace("(TM)", "")
    return f"{device.get('hostname', '?')} ({cpu.strip()})"


def merge_results(results: list[dict], sources: list[str]) -> dict:
    records = []
    for result, source in zip(results, sources):
        if result.get("record_version") != RECORD_VERSION or "records" not in result:
            raise ValueError(f"{source}: not a feredge bench record file (record_version {RECORD_VERSION})")
        label = device_label(result.get("device", {}))
        records += [dataclasses.replace(record, device_label=label) for record in as_records(result["records"])]
    devices = {device_label(r.get("device", {})): r.get("device", {}) for r in results}
    return {
        "record_version": RECORD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": ", ".join(sorted({str(r.get("model")) for r in results})),
        "bundle": ", ".join(sorted({str(r.get("bundle")) for r in results})),
        "sources": sources,
        "device": next(iter(devices.values())) if len(devices) == 1 else {"cpu": "several", "packages": {}},
        "devices": devices,
        "records": records,
    }
