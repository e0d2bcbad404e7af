"""One person with the inspector open, for the benchmark's inspect section: follows the live requests
one after another as the page does (the feed with ``watch=`` the newest live request, read until
that request's end arrives, then the next), so the gateway streams each watched request's entries
to it. Prints ``READY``, then answers each ``stats`` line on stdin with a JSON line of what it read.

    python -m gateway.bench.viewer <gateway URL> <admin key>
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

_END = b',"end",'  # an entry ``[t, "end", {...}]``: the watched request is over


async def follow(url: str, key: str, stats: dict[str, int]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/inspect/api/requests", params={"status": "live"}, headers=headers) as r:
                live = await r.json()
            if not live:
                await asyncio.sleep(0.05)  # nothing streams: look again soon, as the page's feed would tell
                continue
            async with session.get(url + "/inspect/api/feed", params={"watch": live[-1]["id"]}, headers=headers) as feed:
                stats["watched"] += 1
                async for line in feed.content:
                    stats["bytes"] += len(line)
                    if line.startswith(b"event: entries"):
                        stats["entry_events"] += 1
                    elif line.startswith(b"event: overflow"):
                        stats["overflows"] += 1
                    elif _END in line:
                        break


async def main(url: str, key: str) -> None:
    stats = {"watched": 0, "entry_events": 0, "bytes": 0, "overflows": 0}
    task = asyncio.ensure_future(follow(url, key, stats))
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # the benchmark is done with us
            task.cancel()
            return
        if task.done() and task.exception() is not None:
            print(json.dumps({"fatal": repr(task.exception())}), flush=True)
        else:
            print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
