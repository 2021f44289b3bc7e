"""scenario=serving: benchmarks of an OpenAI-compatible server under load (launched here or attached to).

Modules, in the order a run goes through them: checks (config checks), plan (tokenize before anything
starts), backends (the engine's own server, or attach mode), server (process lifecycle, memory), client
(streaming requests, arrival schedule and ramp), metrics (vLLM's definitions), execute (one run, its record),
plot and report (the serving table of `python -m runner.report`).
"""
