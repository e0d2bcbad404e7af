"""Performance benchmark of the gateway: ``python -m gateway.bench`` (see ``gateway/bench/README.md``).

Not part of the test suite. Modules:

* ``workload``  - the vLLM-shaped chunk streams (text, reasoning, tool calls, mixed), pre-encoded;
* ``upstream``  - a fake vLLM that writes those streams as fast as it can (or trickles them);
* ``loadgen``   - the load generator process (asyncio + aiohttp), measuring one run;
* ``procstat``  - CPU and memory of process trees from ``/proc``;
* ``procs``     - starting, polling and stopping the upstream, gateway and load generator;
* ``machine``   - the in-process micro-benchmark of the Responses state machine;
* ``soak``      - the soak run's two ends: what the fake vLLM does per request, and the client;
* ``sections``  - the measured sections (relay, workers, memory, machine, soak), one function each;
* ``report``    - tables, targets and JSON;
* ``ab``        - two builds (or two configurations) side by side: ``python -m gateway.bench.ab``.
"""
