"""Print what an offline W&B run recorded: metric definitions (which x-axis), the per-task curve rows, config keys.

    python tests/scripts/read_wandb_log.py <save_dir>/wandb

Reads ``offline-run-*/run-<id>.wandb``, W&B's transaction log: a 7-byte ``:W&B`` header, then leveldb-log
framing (32 KiB blocks; each chunk a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of wandb's own
protobuf ``Record`` messages. No network, no W&B account.
"""
import json, struct, sys
from pathlib import Path
from wandb.proto import wandb_internal_pb2 as pb

def records(path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left; continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]; pos += 7 + length
        if kind == 0 and length == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record(); rec.ParseFromString(buf); yield rec

run = next(Path(sys.argv[1]).glob("offline-run-*/run-*.wandb"))
defined, rows, config = {}, [], {}
for rec in records(run):
    kind = rec.WhichOneof("record_type")
    if kind == "metric":
        defined[rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
    elif kind == "history":
        rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
    elif kind == "config":
        config.update({item.key: item.value_json for item in rec.config.update})
    elif kind == "exit":
        print("exit record: complete")
curve_keys = sorted(k for k in defined if k.startswith(("retention/acc_task", "transfer/")))
print("defined on the task axis:", {k: defined[k] for k in curve_keys})
for row in rows:
    if "retention/acc_task00" in row:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
               if k == "task" or k.startswith(("retention/acc_task", "transfer/"))})
print("top-level config keys:", sorted(config))
