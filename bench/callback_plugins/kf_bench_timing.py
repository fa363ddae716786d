"""Benchmark-only callback (not shipped in the collection): per-task wall time and module runs.

Enabled by bench/run.py with ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins and
ANSIBLE_CALLBACKS_ENABLED=kf_bench_timing; writes JSON to $KF_BENCH_TIMING_OUT at the end.
ansible-core 2.19 ships no timing callback (profile_tasks lives in ansible.posix).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: kf_bench_timing
    type: aggregate
    short_description: per-task wall time and module invocation counts, as JSON
    description: Benchmark helper of kernelfence (bench/), not part of the collection.
    requirements: [the KF_BENCH_TIMING_OUT environment variable names the output file]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kf_bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.began = time.time()
        self.tasks: list[dict] = []
        self.current: dict | None = None

    def _close(self) -> None:
        if self.current is not None:
            self.current["seconds"] = round(time.time() - self.current.pop("_t0"), 3)
            self.tasks.append(self.current)
            self.current = None

    def _start(self, task, handler: bool) -> None:
        self._close()
        self.current = {"name": task.get_name(), "action": task.action, "handler": handler,
                        "delegated": bool(task.delegate_to),
                        "invocations": 0, "changed": 0, "skipped": 0, "failed": 0,
                        "_t0": time.time()}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task, False)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task, True)

    def _count(self, result, status: str) -> None:
        if self.current is None:
            return
        res = result._result
        if status == "skipped":
            self.current["skipped"] += 1
            return
        # A looped task reports its items one by one and then an aggregate: count the items.
        if "results" in res and isinstance(res["results"], list):
            return
        self.current["invocations"] += 1
        if res.get("changed"):
            self.current["changed"] += 1
        if status == "failed":
            self.current["failed"] += 1

    def v2_runner_on_ok(self, result):
        self._count(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._count(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._count(result, "failed")

    def v2_runner_item_on_ok(self, result):
        self._count(result, "ok")

    def v2_runner_item_on_failed(self, result):
        self._count(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._count(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._close()
        out = os.environ.get("KF_BENCH_TIMING_OUT")
        if not out:
            return
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"wall_s": round(time.time() - self.began, 3), "tasks": self.tasks,
                       "stats": summary}, fh, indent=1)
