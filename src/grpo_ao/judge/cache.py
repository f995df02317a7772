"""Persistent result cache: one SQLite file, safe to share between processes and restarts.

One table, one namespace per kind of call ("judge" scores, "expand" rewrites), so kinds never mix even when
their keys would collide. A row holds the `JudgeResult` fields the reply decided (`REPLY_FIELDS`, as JSON)
and the raw reply. A judge key = sha256(model, temperature, max_tokens, reasoning, template hash,
with_correctness, context, question, answer): every setting that changes the reply. Only successful results
are stored, so a failure is retried on the next step instead of being remembered.

We deliberately do not expire or migrate entries: the key changes when a setting does, and a file written by
an older version (its table was `replies`) is simply not read, so every item misses once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import REPLY_FIELDS, JudgeItem, JudgeResult

JUDGE_NAMESPACE = "judge"
"""Namespace of the judge's scores."""

_SCHEMA = """CREATE TABLE IF NOT EXISTS results (
    namespace TEXT NOT NULL, key TEXT NOT NULL, fields TEXT NOT NULL, raw TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (namespace, key)
)"""


def hash_key(*parts: object) -> str:
    """sha256 hex of the JSON of `parts` (strings, numbers, booleans, None)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).hexdigest()


def cache_key(cfg: JudgeConfig, item: JudgeItem) -> str:
    """Judge key: everything that decides the judgement (the reference is not shown to an API judge)."""
    return hash_key(*cfg.reply_settings, cfg.template_hash, cfg.with_correctness,
                    item.context, item.question, item.answer)


class JudgeCache:
    """Key-value store of successful `JudgeResult`s per namespace in SQLite (WAL mode, busy timeout).

    Each operation opens its own short connection, so the cache works from any thread or process.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, across processes
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.timeout_s)

    def get_many(self, keys: list[str], namespace: str = JUDGE_NAMESPACE) -> dict[str, JudgeResult]:
        """Cached results for those keys that have one, marked `cached=True`, `attempts=0`, latency 0.

        Raises:
            sqlite3.Error, ValueError: an unreadable file or a stored row that is not a JSON object of
                `REPLY_FIELDS` (the caller logs it and goes on without the cache).
        """
        found: dict[str, JudgeResult] = {}
        conn = self._connect()
        try:
            for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, fields, raw FROM results WHERE namespace = ? AND key IN ({marks})",
                    [namespace, *chunk],
                ).fetchall()
                for key, fields, raw in rows:
                    found[key] = JudgeResult(**_reply_fields(json.loads(fields)), raw=raw, cached=True)
        finally:
            conn.close()
        return found

    def put(self, key: str, result: JudgeResult, namespace: str = JUDGE_NAMESPACE) -> None:
        """Store a successful result's `REPLY_FIELDS` and raw reply (failures are never cached)."""
        assert result.ok, "only successful results are cached"
        fields = {name: getattr(result, name) for name in REPLY_FIELDS}
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                    (namespace, key, json.dumps(fields, ensure_ascii=False), result.raw, time.time()),
                )
        finally:
            conn.close()


def _reply_fields(fields: object) -> dict[str, object]:
    """The stored fields, checked: a JSON object with only `REPLY_FIELDS` keys and a score or value."""
    if not isinstance(fields, dict) or not set(fields) <= set(REPLY_FIELDS):
        raise ValueError(f"a cached row is not an object of {REPLY_FIELDS}: {str(fields)[:80]}")
    if fields.get("informativeness") is None and fields.get("value") is None:
        raise ValueError("a cached row has neither a score nor a value")
    return fields
