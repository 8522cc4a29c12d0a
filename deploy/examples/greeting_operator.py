"""The Greeting operator: `python greeting_operator.py --etcd http://127.0.0.1:2379`."""

from shoal.runtime import Context, Resource, on, operator


@on.reconcile("greetings")
async def greet(obj: Resource, ctx: Context) -> dict[str, str]:
    # Merged into status, together with status.observedGeneration.
    return {"message": f"Hello, {obj.spec['name']}!"}


if __name__ == "__main__":
    operator.main()
