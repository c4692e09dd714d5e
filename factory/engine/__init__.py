"""The engine: runs any method's shards on actors and commits them; it imports no method.

`contract` (what a method and its actors implement), `lifecycle` (check, plan, resume,
run.json, shard loop, _SUCCESS.json: `run_method`), `shards` (the bounded shard loop),
`pools` (Ray actor pools with leases, timeouts and restarts, or one process),
`runtime` (joining Ray). The data contract itself lives in `manifests`.
"""
