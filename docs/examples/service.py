"""In your own service: a Task base class with handlers, resources from on_startup, arq's WorkerSettings."""

from typing import Any

from tasks_engine import Task, shared_task, worker_context, worker_settings

failures: list[str] = []


class AuditedTask(Task):  # Celery's handler methods, sync or async
    async def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        failures.append(f"{self.name} {task_id}: {exc}")


@shared_task(name="docs.sync_user", base=AuditedTask)
async def sync_user(user_id: int) -> str:
    pool = worker_context().get("db", {})  # what on_startup put there, on the worker's own loop
    if user_id < 0:
        raise ValueError(f"no user {user_id}")
    return f"user {user_id} synced via {pool.get('name', 'no pool')}"


async def on_startup(ctx: dict[str, Any]) -> None:  # before the first job
    ctx["db"] = {"name": "the pool"}


async def on_shutdown(ctx: dict[str, Any]) -> None:  # after the last job drained
    ctx.pop("db", None)


WorkerSettings = worker_settings(on_startup=on_startup, on_shutdown=on_shutdown)  # arq service.WorkerSettings


async def main() -> None:
    assert (await (await sync_user.delay(7)).get(timeout=10)).startswith("user 7 synced")
    failed = await sync_user.delay(-1)
    assert await failed.get(timeout=10, propagate=False) is not None
    assert any("no user -1" in line for line in failures)
