"""Agents benchmark: (a) the learned router in a simulated environment; (b) orchestration.

**(a) Router** (:func:`router_bench`). A documented simulated environment, fixed seeds:

- *Requests* come in 7 kinds (share of traffic; domain label, modality, median length):
  policy Q&A (25 %; gov, text, 300 chars), form filling (15 %; gov, table, 150), invoice
  OCR (15 %; finance, image, 80), report analysis (10 %; finance, table, 2,500), chit-chat
  (15 %; no domain, text, 60), legal drafting (10 %; legal, text, 1,500), case bundles
  (10 %; legal, mixed, 3,000). Lengths are log-normal around the median (σ 0.5 in log
  space). The domain label is missing on 20 % of requests. Each request has a 32-d
  embedding: its kind's fixed random centroid plus as much Gaussian noise (σ 1 per
  component, so cosine to the centroid ≈ 0.7). The tenant is one of 4, with no effect.
- *Arms* (5): small-chat, large-chat, rag-agent, table-agent, vision-agent.
- *Outcome* of sending a request of kind k and length n to arm a: success ~ Bernoulli(p)
  with ``logit p = logit P[k, a] − β_a · log(n / median_k)`` (a fixed 7×5 table ``P``;
  β is 0.8 for small-chat, 0.3 for the others: long requests hurt the small model most);
  latency = ``L_a · (1 + n/2000)`` seconds × log-normal noise (σ 0.3); tokens =
  ``T_a · (1 + n/1500)`` × log-normal noise (σ 0.3); with probability 0.3 the user gives
  feedback, +1 with probability 0.9 after a success and 0.15 after a failure, else −1.
- *Reward* (manifest weights): success 1.0, feedback 0.5, latency 0.1 per second, cost 0.1
  per 1,000 tokens. Regret is measured on expected rewards (pseudo-regret): for each
  round, the best arm's expected reward for that request minus the chosen arm's.

LinUCB and linear Thompson sampling run with the router's defaults (``alpha`` in units of
the estimated reward noise: 1.0 for LinUCB, 0.5 for Thompson; floor 0.05, 8 embedding
dimensions, 22 features in all), on 10 seeds (``--seed``, ``--repeats``; each seed is a new
environment and request stream, the first also gives the latency and the off-policy figures)
through the real :class:`RouterService` on a temporary SQLite file, so the decision log and
the persistence of every update are included: per round ``decide`` → ``finish_run``
(success, latency, tokens) → ``feedback`` when the user gave some (which closes the
decision), else ``close``. The router waits for feedback (``feedback_window_s`` 60), and
decisions without any are closed at once, as ``sweep`` would after the window: learning is
not delayed in this simulation. Reported: cumulative regret of uniform random choice, of the
best fixed arm in hindsight, of the linear oracle (a reference: the greedy policy of per-arm
least squares fitted to the true expected rewards on the router's features), of two learning
references (LinUCB with floor 0, and LinUCB told each request's true kind), of LinUCB and of
Thompson, each against the oracle; their ratio to uniform's (target ≤ 0.20, on the mean over
seeds); the latency of ``RouterService.decide`` (target p99 ≤ 1 ms) and of the policy's
``choose`` alone; and off-policy estimates (IPS, SNIPS, DR) next to true values for (1) the
final policy on the newer half of its own log (in-sample: the policy learned from these
records) and (2) the candidate that ``RouterService.evaluate`` fits on the older half and
scores on the newer half (out of sample). True values are exact expectations over 20,000
fresh requests.

**(b) Orchestration**: added later as ``orchestration_bench()`` in this module; ``main``
runs it when it exists. Raw results go to ``bench/out/agents-<UTC>.json``; the
``## Agents`` section of ``bench/RESULTS.md`` is rewritten (a part not run this time is
taken from the latest raw result that has it).

Usage:
    $ .venv/bin/python bench/agents.py --only router     # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import git_info, loadavg, machine, percentile, versions  # noqa: E402
from _orchestration import orchestration_bench as _orchestration  # noqa: E402
from _results import fmt, met, save_run, write_section  # noqa: E402

from qingliang.agents.routing.features import RequestFeatures  # noqa: E402
from qingliang.agents.routing.ope import Logged, evaluate  # noqa: E402
from qingliang.agents.routing.policy import (  # noqa: E402
    PolicySpec,
    make_policy,
    policy_from_state,
)
from qingliang.agents.routing.rewards import RewardWeights, combine  # noqa: E402
from qingliang.agents.routing.router import RouterConfig, RouterService  # noqa: E402

logger = logging.getLogger("bench.agents")
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
RESULTS = REPO / "bench" / "RESULTS.md"

ARMS = ("small-chat", "large-chat", "rag-agent", "table-agent", "vision-agent")
# name, domain, modality, median chars, traffic share
KINDS = (
    ("policy-qa", "gov", "text", 300, 0.25),
    ("form-fill", "gov", "table", 150, 0.15),
    ("invoice-ocr", "finance", "image", 80, 0.15),
    ("report-analysis", "finance", "table", 2500, 0.10),
    ("chitchat", None, "text", 60, 0.15),
    ("legal-drafting", "legal", "text", 1500, 0.10),
    ("case-bundle", "legal", "mixed", 3000, 0.10),
)
# P(success) per kind (rows, as KINDS) and arm (columns, as ARMS) at the median length.
SUCCESS = np.array(
    [
        [0.45, 0.70, 0.88, 0.30, 0.20],
        [0.40, 0.65, 0.50, 0.85, 0.30],
        [0.05, 0.30, 0.10, 0.45, 0.90],
        [0.15, 0.60, 0.35, 0.80, 0.25],
        [0.92, 0.95, 0.70, 0.40, 0.40],
        [0.20, 0.80, 0.70, 0.25, 0.15],
        [0.10, 0.55, 0.60, 0.35, 0.50],
    ]
)
LENGTH_BETA = np.array([0.8, 0.3, 0.3, 0.3, 0.3])
LATENCY_S = np.array([0.4, 2.5, 1.5, 1.8, 2.0])
TOKENS = np.array([300.0, 900.0, 1500.0, 1200.0, 1100.0])
NOISE_SIGMA = 0.3  # log-normal noise of latency and tokens
FEEDBACK_RATE, FB_GOOD, FB_BAD = 0.3, 0.9, 0.15
WEIGHTS = RewardWeights(feedback=0.5, approval=1.0, success=1.0, latency=0.1, cost=0.1)
DOMAINS = ("gov", "finance", "legal")
TENANTS = ("t-north", "t-south", "t-east", "t-west")
EMBED_DIMS, EMBED_NOISE, MISSING_DOMAIN = 32, 1.0, 0.2
ALGOS = ("linucb", "thompson")


class Environment:
    """The simulated requests and outcomes described in the module docstring."""

    def __init__(self, seed: int) -> None:
        self.centroids = np.random.default_rng(1000 + seed).standard_normal(
            (len(KINDS), EMBED_DIMS)
        )
        self.share = np.array([k[4] for k in KINDS])

    def context(self, rng: np.random.Generator) -> tuple[int, int, RequestFeatures]:
        k = int(rng.choice(len(KINDS), p=self.share))
        _, domain, modality, median, _ = KINDS[k]
        n = int(np.clip(round(median * math.exp(rng.normal(0, 0.5))), 5, 8000))
        emb = self.centroids[k] + rng.normal(0, EMBED_NOISE, EMBED_DIMS)
        label = None if rng.random() < MISSING_DOMAIN else domain
        f = RequestFeatures("x" * n, emb.tolist(), label, modality, TENANTS[rng.integers(4)])
        return k, n, f

    @staticmethod
    def p_success(k: int, n: int) -> np.ndarray:
        logit = np.log(SUCCESS[k] / (1 - SUCCESS[k])) - LENGTH_BETA * math.log(n / KINDS[k][3])
        return 1 / (1 + np.exp(-logit))

    def expected(self, k: int, n: int) -> np.ndarray:
        """Expected reward of every arm for a request (the oracle's view)."""
        p = self.p_success(k, n)
        fb = FEEDBACK_RATE * (p * (2 * FB_GOOD - 1) + (1 - p) * (2 * FB_BAD - 1))
        noise = math.exp(NOISE_SIGMA**2 / 2)
        latency = LATENCY_S * (1 + n / 2000) * noise
        tokens = TOKENS * (1 + n / 1500) * noise
        w = WEIGHTS
        return w.success * p + w.feedback * fb - w.latency * latency - w.cost * tokens / 1000

    def outcome(self, k: int, n: int, a: int, rng: np.random.Generator) -> dict[str, Any]:
        ok = bool(rng.random() < self.p_success(k, n)[a])
        feedback = None
        if rng.random() < FEEDBACK_RATE:
            feedback = 1.0 if rng.random() < (FB_GOOD if ok else FB_BAD) else -1.0
        return {
            "success": ok,
            "latency_s": float(LATENCY_S[a] * (1 + n / 2000) * rng.lognormal(0, NOISE_SIGMA)),
            "tokens": int(TOKENS[a] * (1 + n / 1500) * rng.lognormal(0, NOISE_SIGMA)),
            "feedback": feedback,
        }


def _ms(ns: list[int]) -> dict[str, float | None]:
    ms = [v / 1e6 for v in ns]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "mean": float(np.mean(ms)),
        "max": max(ms),
    }


def _true_value(policy: Any, env: Environment, contexts: list, encoder: Any) -> float:
    total = 0.0
    for k, n, f in contexts:
        pi = policy.probabilities(encoder.encode(f))
        mu = env.expected(k, n)
        total += sum(pi[a] * mu[i] for i, a in enumerate(ARMS))
    return total / len(contexts)


def _ope_row(report: Any, true: float) -> dict[str, Any]:
    return {
        "true": true,
        "logged_value": report.logged_value,
        "n": report.n,
        **{
            k: {"value": e.value, "stderr": e.stderr, "ess": e.ess}
            for k, e in (("ips", report.ips), ("snips", report.snips), ("dr", report.dr))
        },
    }


def _run_algorithm(
    algo: str,
    env: Environment,
    contexts: list,
    seed: int,
    fresh: list | None,
    **overrides: Any,
) -> dict[str, Any]:
    """One learning run through a RouterService on a temporary file (``overrides``: router
    settings other than the defaults); with ``fresh`` contexts, also the policy-alone
    latency and the off-policy evaluation."""
    config = RouterConfig(
        ARMS, algo, seed=seed, domains=DOMAINS, reward=WEIGHTS, feedback_window_s=60.0,
        **overrides,
    )  # fmt: skip
    rng = np.random.default_rng(seed + 1)
    decide_ns, learn_ns, regret, curve = [], [], np.zeros(len(contexts)), {}
    with tempfile.TemporaryDirectory(prefix="ql-router-bench-") as tmp:
        svc = RouterService(Path(tmp) / "router.sqlite")
        svc.register("bench/router", config)
        for t, (k, n, f) in enumerate(contexts, 1):
            t0 = time.perf_counter_ns()
            d = svc.decide("bench/router", f, run_id=f"run-{t}")
            t1 = time.perf_counter_ns()
            a = ARMS.index(d.arm)
            out = env.outcome(k, n, a, rng)
            t2 = time.perf_counter_ns()
            svc.finish_run(f"run-{t}", **{x: out[x] for x in ("success", "latency_s", "tokens")})
            if out["feedback"] is not None:
                svc.feedback(f"run-{t}", out["feedback"])
            else:
                svc.close(d.decision_id)
            learn_ns.append(time.perf_counter_ns() - t2)
            decide_ns.append(t1 - t0)
            mu = env.expected(k, n)
            regret[t - 1] = mu.max() - mu[a]
        for t in (250, 500, 1000, len(contexts)):
            curve[t] = float(regret[: min(t, len(contexts))].sum())
        result: dict[str, Any] = {
            "regret": float(regret.sum()),
            "regret_last_quarter": float(regret[-len(contexts) // 4 :].sum()),
            "curve": curve,
            "decide_ms": _ms(decide_ns),
            "learn_ms": _ms(learn_ns),
        }
        if fresh is None:
            return result
        stats = svc.stats("bench/router")
        stored = svc.log.load_state("bench/router")
        logged = svc.log.logged("bench/router")
        result["db_mib"] = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
        service_report = svc.evaluate("bench/router", config)
        svc.log.disconnect()
    final = policy_from_state(stored.state, seed=seed)
    final.frozen = True
    encoder = config.encoder()
    choose_ns = []
    for _, _, f in contexts:
        x = encoder.encode(f)
        t0 = time.perf_counter_ns()
        final.choose(x)
        choose_ns.append(time.perf_counter_ns() - t0)
    records = [Logged(d.features, d.arm, d.propensity, d.reward) for d in logged]
    half = len(records) // 2
    # The candidate RouterService.evaluate fitted: the config's policy replayed on the
    # older half (rewards from the parts, as the service recomputes them).
    candidate = make_policy(config.policy_spec())
    for d in logged[:half]:
        candidate.update(d.arm, d.features, combine(d.parts, WEIGHTS))
    candidate.frozen = True
    true_final = _true_value(final, env, fresh, encoder)
    result.update(
        arm_counts={a: v["count"] for a, v in stats["arms"].items()},
        noise_estimate=final.noise,
        choose_ms=_ms(choose_ns),
        ope_final=_ope_row(evaluate(final, records[half:]), true_final),
        ope_service=_ope_row(service_report, _true_value(candidate, env, fresh, encoder)),
    )
    return result


def _baselines(env: Environment, contexts: list, fresh: list) -> dict[str, Any]:
    """Uniform, best fixed arm in hindsight, and the linear oracle (the greedy policy of
    per-arm least squares of the true expected rewards on the router's 22 features)."""
    mus = np.array([env.expected(k, n) for k, n, _ in contexts])
    best = mus.max(axis=1)
    per_arm = (best[:, None] - mus).sum(axis=0)
    encoder = RouterConfig(ARMS, "linucb", domains=DOMAINS).encoder()
    xf = np.array([encoder.encode(f) for _, _, f in fresh])
    mf = np.array([env.expected(k, n) for k, n, _ in fresh])
    theta = np.linalg.lstsq(xf, mf, rcond=None)[0]
    pick = (np.array([encoder.encode(f) for _, _, f in contexts]) @ theta).argmax(axis=1)
    return {
        "oracle_mean_reward": float(best.mean()),
        "oracle_arm_share": {a: float(np.mean(mus.argmax(1) == i)) for i, a in enumerate(ARMS)},
        "uniform": float((best - mus.mean(axis=1)).sum()),
        "uniform_last_quarter": float((best - mus.mean(axis=1))[-len(mus) // 4 :].sum()),
        "best_fixed": float(per_arm.min()),
        "best_fixed_arm": ARMS[int(np.argmin(per_arm))],
        "linear_oracle": float((best - mus[np.arange(len(mus)), pick]).sum()),
    }


def _kind_oracle_learner(env: Environment, contexts: list, seed: int) -> float:
    """Regret of LinUCB (defaults, no floor) given what no router knows: the request's
    true kind (one-hot) and its log length relative to the kind's median. A reference
    for how much of the regret is the cost of learning at all."""
    spec = PolicySpec("linucb", ARMS, len(KINDS) + 2, alpha=1.0, seed=seed, noise_scaled=True)
    policy = make_policy(spec)
    rng, regret = np.random.default_rng(seed + 1), 0.0
    for k, n, _ in contexts:
        x = np.zeros(len(KINDS) + 2)
        x[k], x[-2], x[-1] = 1.0, math.log(n / KINDS[k][3]), 1.0
        a = ARMS.index(policy.choose(x).arm)
        out = env.outcome(k, n, a, rng)
        parts = {"success": float(out["success"]), "latency_s": out["latency_s"]}
        parts["tokens"] = out["tokens"]
        if out["feedback"] is not None:
            parts["feedback"] = out["feedback"]
        policy.update(ARMS[a], x, combine(parts, WEIGHTS))
        mu = env.expected(k, n)
        regret += float(mu.max() - mu[a])
    return regret


def router_bench(rounds: int = 2000, seed: int = 7, repeats: int = 10) -> dict[str, Any]:
    """Run part (a) and return its results (see the module docstring): ``repeats`` seeds
    from ``seed`` on; the first also gives latency and off-policy evaluation."""
    started, load = time.time(), loadavg()
    runs = []
    for s in range(seed, seed + repeats):
        env = Environment(s)
        rng, frng = np.random.default_rng(s), np.random.default_rng(s + 99)
        contexts = [env.context(rng) for _ in range(rounds)]
        fresh = [env.context(frng) for _ in range(20_000)]
        run: dict[str, Any] = {"seed": s, **_baselines(env, contexts, fresh), "algorithms": {}}
        for algo in ALGOS:
            logger.info("router bench: seed %d, %s, %d rounds", s, algo, rounds)
            detail = fresh if s == seed else None
            run["algorithms"][algo] = _run_algorithm(algo, env, contexts, s, detail)
        logger.info("router bench: seed %d, references", s)
        run["linucb_floor0"] = _run_algorithm("linucb", env, contexts, s, None, floor=0.0)["regret"]
        run["kind_oracle_learner"] = _kind_oracle_learner(env, contexts, s)
        run["ratio"] = {
            name: value / run["uniform"]
            for name, value in [
                ("best_fixed", run["best_fixed"]),
                ("linear_oracle", run["linear_oracle"]),
                ("linucb_floor0", run["linucb_floor0"]),
                ("kind_oracle_learner", run["kind_oracle_learner"]),
                *((a, run["algorithms"][a]["regret"]) for a in ALGOS),
            ]
        }
        runs.append(run)
    ratios = {k: [r["ratio"][k] for r in runs] for k in runs[0]["ratio"]}
    mean_ratio = {k: float(np.mean(v)) for k, v in ratios.items()}
    decide_p99 = {a: max(r["algorithms"][a]["decide_ms"]["p99"] for r in runs) for a in ALGOS}
    return {
        "rounds": rounds,
        "seeds": [r["seed"] for r in runs],
        "arms": list(ARMS),
        "kinds": [k[0] for k in KINDS],
        "weights": WEIGHTS.to_dict(),
        "runs": runs,
        "mean_ratio": mean_ratio,
        "sd_ratio": {k: float(np.std(v)) for k, v in ratios.items()},
        "worst_decide_p99_ms": decide_p99,
        "targets": {
            **{f"{a} mean regret ≤ 20 % of uniform": mean_ratio[a] <= 0.20 for a in ALGOS},
            **{f"{a} decide p99 ≤ 1 ms (every seed)": decide_p99[a] <= 1.0 for a in ALGOS},
        },
        "wall_s": time.time() - started,
        "finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "loadavg_start": load,
        "versions": versions(["numpy"]),
        "git": git_info(REPO),
    }


def _header(r: dict[str, Any], script: str) -> list[str]:
    m, g = r["machine"], r["git"]
    dirty = f" (+{g['dirty_files']} uncommitted files)" if g.get("dirty_files") else ""
    return [
        f"- Date: {r['finished_utc']} · `{script}` · {r['wall_s']:.0f} s · numpy "
        f"{r['versions'].get('numpy')}, Python {m['python']}; commit `{g['commit'][:10]}`{dirty}"
        + (f" · raw: `{r['raw']}`" if r.get("raw") else ""),
        f"- Machine: {m['cpu_model']}, {m['cpus']} cores, {m['ram_gib']} GiB RAM; load average "
        f"at start {' / '.join(f'{x:.2f}' for x in r['loadavg_start'])}",
    ]


def _router_section(r: dict[str, Any]) -> list[str]:
    head = r["runs"][0]
    algos = head["algorithms"]
    seeds = r["seeds"]
    lines = [f"### Router (simulated, {r['rounds']:,} rounds)", "", *_header(r, "bench/agents.py")]
    lines += [
        "- Environment (`bench/agents.py` docstring): 7 request kinds (policy Q&A, form "
        "filling, invoice OCR, report analysis, chit-chat, legal drafting, case bundles) with "
        "a domain label (missing on 20 %), modality, log-normal length and a noisy 32-d "
        "embedding; 5 arms (small-chat, large-chat, rag-agent, table-agent, vision-agent); "
        "Bernoulli success from a fixed kind × arm table, worse for long requests (most for "
        "small-chat), log-normal latency and tokens per arm, feedback on 30 % of requests",
        "- Reward: success + 0.5 · feedback − 0.1 · latency (s) − 0.1 · tokens / 1,000; "
        "regret on expected rewards against the oracle (best arm per request); oracle mean "
        f"reward {head['oracle_mean_reward']:.3f} (seed {head['seed']})",
        "- Router: the real `RouterService` on a temporary SQLite file (every decision "
        "logged, the policy state written on every update), defaults: `alpha` (in units of "
        "the estimated reward noise) 1.0 for LinUCB and 0.5 for Thompson, floor 0.05, 22 "
        "features; "
        f"{len(seeds)} seeds ({seeds[0]}–{seeds[-1]}), each a new environment and request "
        "stream",
        "",
        f"| policy | regret, seed {head['seed']} | ratio to uniform, seed {head['seed']} | "
        f"ratio, mean ± sd over {len(seeds)} seeds | ratio over the last quarter, "
        f"seed {head['seed']} |",
        "|---|---:|---:|---:|---:|",
    ]
    mean, sd = r["mean_ratio"], r["sd_ratio"]
    rows = [
        ("uniform random", head["uniform"], 1.0, (1.0, 0.0)),
        (
            f"best fixed arm in hindsight (`{head['best_fixed_arm']}`)",
            head["best_fixed"],
            head["ratio"]["best_fixed"],
            (mean["best_fixed"], sd["best_fixed"]),
        ),
        (
            "linear oracle (reference: best linear policy on the 22 features, no floor)",
            head["linear_oracle"],
            head["ratio"]["linear_oracle"],
            (mean["linear_oracle"], sd["linear_oracle"]),
        ),
        (
            "reference: LinUCB told each request's true kind (features no router has), no floor",
            head["kind_oracle_learner"],
            head["ratio"]["kind_oracle_learner"],
            (mean["kind_oracle_learner"], sd["kind_oracle_learner"]),
        ),
        (
            "reference: linucb with floor 0 (no off-policy support)",
            head["linucb_floor0"],
            head["ratio"]["linucb_floor0"],
            (mean["linucb_floor0"], sd["linucb_floor0"]),
        ),
    ]
    for label, regret, ratio, (m, d) in rows:
        lines.append(f"| {label} | {fmt(regret)} | {ratio:.3f} | {m:.3f} ± {d:.3f} | |")
    uniform_q = head["uniform_last_quarter"]
    for name, a in algos.items():
        lines.append(
            f"| {name} | {fmt(a['regret'])} | {head['ratio'][name]:.3f} | "
            f"{mean[name]:.3f} ± {sd[name]:.3f} | {a['regret_last_quarter'] / uniform_q:.3f} |"
        )
    quarter = {n: a["regret_last_quarter"] / uniform_q for n, a in algos.items()}
    lines += [
        "",
        "Where the regret goes: the floor costs "
        f"{mean['linucb'] - mean['linucb_floor0']:.3f} of uniform's regret for linucb "
        f"(with floor 0.05 against floor 0; seed mean); the linear oracle leaves "
        f"{mean['linear_oracle']:.3f} (what a linear model of the 22 features cannot "
        "express); and even a learner told each request's true kind, which no router knows, "
        f"leaves {mean['kind_oracle_learner']:.3f}: that much is the price of learning "
        "five arms from nothing in 2,000 noisy rounds. The rest is learning, mostly early: "
        "over the last quarter of the run the "
        + " and ".join(f"{n} ratio is {q:.3f}" for n, q in quarter.items())
        + ".",
        "",
        f"Latency (ms), seed {head['seed']}; the decide p99 over all seeds is in the targets.",
        "",
        "| | p50 | p99 | mean | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, a in algos.items():
        for key, label in (
            ("decide_ms", "`RouterService.decide` (encode, choose, log)"),
            ("choose_ms", "policy `choose` alone"),
            ("learn_ms", "`finish_run` + `feedback`/`close` (learn, persist)"),
        ):
            st = a[key]
            lines.append(
                f"| {name}: {label} | {fmt(st['p50'], 3)} | {fmt(st['p99'], 3)} | "
                f"{fmt(st['mean'], 3)} | {fmt(st['max'], 2)} |"
            )
    lines += [
        "",
        "Off-policy evaluation against true values (exact expectations over 20,000 fresh "
        f"requests), seed {head['seed']}: the final policy on the newer half of its own log "
        "(in-sample: it learned from those records), and the candidate that "
        "`RouterService.evaluate` fits on the older half and scores on the newer half.",
        "",
        "| policy | true value | logged value | IPS | SNIPS | DR (± s.e.) | ESS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in algos.items():
        for key, label in (("ope_final", "final"), ("ope_service", "`evaluate()` candidate")):
            o = a[key]
            lines.append(
                f"| {name} {label} | {o['true']:.3f} | {o['logged_value']:.3f} | "
                f"{o['ips']['value']:.3f} | {o['snips']['value']:.3f} | "
                f"{o['dr']['value']:.3f} ± {o['dr']['stderr']:.3f} | {o['dr']['ess']:.0f} |"
            )
    lines += [
        "",
        "A deterministic candidate (LinUCB) judged on the log of another near-deterministic "
        "policy overlaps with it only where both choose the same arm and through the floor: "
        "its effective sample size is small and its estimates wide; Thompson's candidates "
        "spread their choices and are judged on most of the log.",
    ]
    lines += ["", "Targets:", ""]
    for name in algos:
        p99 = r["worst_decide_p99_ms"][name]
        lines.append(
            f"- {name}: regret ≤ 20 % of uniform's: {mean[name]:.1%} (mean of {len(seeds)} "
            f"seeds) — {met(mean[name] <= 0.2)}"
        )
        lines.append(f"- {name}: decide p99 ≤ 1 ms: {p99:.3f} ms (worst seed) — {met(p99 <= 1.0)}")
    return lines


def section(router: dict[str, Any] | None, orchestration: dict[str, Any] | None) -> str:
    """The ``## Agents`` section of ``bench/RESULTS.md`` from the parts that ran."""
    lines = ["## Agents", ""]
    if router:
        lines += _router_section(router) + [""]
    if orchestration:
        lines += _orchestration_section(orchestration) + [""]
    return "\n".join(lines)


def orchestration_bench(runs: int = 2000) -> dict[str, Any]:
    """Part (b): the 3-node echo graph through the AgentService (``_orchestration.py``)."""
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    before = loadavg()
    out = _orchestration(runs=runs, concurrency=32, rate=100.0, open_runs=1000)
    out.update(
        started=started,
        machine=machine(),
        git=git_info(REPO),
        versions=versions(["langgraph", "langgraph-checkpoint-sqlite"]),
        load_before=before,
        load_after=loadavg(),
    )
    return out


def _orchestration_section(o: dict[str, Any]) -> list[str]:
    m = o["machine"]
    closed, opened = o["latency_ms"], o["open_loop"]["latency_ms"]
    little = 1000 * o["concurrency"] / max(o["runs_per_s"], 1e-9)
    return [
        "### Orchestration (3-node graph, echo model, SQLite checkpoints)",
        "",
        f"- Run: {o['started']} on {m['cpu_model']}, {m['cpus']} cores; load average "
        f"{o['load_before']} before, {o['load_after']} after; "
        f"`python bench/agents.py --only orchestration`.",
        "- What runs: `AgentService.start` → three `agent` nodes in sequence → done, through "
        "LangGraph's StateGraph with the SQLite checkpointer writing after every step "
        '(`durability="sync"`), the run store (run row, events, journal) and the '
        "background driver, on uvloop (what Ray actors use). The model is an in-process echo "
        "that answers at once, so this is orchestration only.",
        "",
        "| | runs/s | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        f"| closed loop, {o['concurrency']} clients back to back ({o['runs']} runs) | "
        f"{fmt(o['runs_per_s'], 1)} | {fmt(closed['p50'], 1)} | {fmt(closed['p90'], 1)} | "
        f"{fmt(closed['p99'], 1)} |",
        f"| open loop, {o['open_loop']['rate_per_s']:g} runs/s arriving, ≤ {o['concurrency']} "
        f"in flight ({o['open_loop']['runs']} runs) | {fmt(o['open_loop']['achieved_per_s'], 1)} "
        f"| {fmt(opened['p50'], 1)} | {fmt(opened['p90'], 1)} | {fmt(opened['p99'], 1)} |",
        "",
        f"Failed runs: {o['failed']}. With 32 clients back to back, each waits for the 31 "
        f"others: by Little's law the closed-loop latency is 32 / throughput = {little:.0f} ms, "
        "so a p50 of 20 ms at concurrency 32 would need 1,600 runs/s; the open-loop row is the "
        "latency a run sees when requests arrive at a steady rate instead.",
        "",
        "Targets:",
        "",
        f"- ≥ 200 runs/s at concurrency 32: {fmt(o['runs_per_s'], 1)} — "
        f"{met(o['runs_per_s'] >= 200)}",
        f"- p50 ≤ 20 ms: closed loop {fmt(closed['p50'], 1)} ms — {met(closed['p50'] <= 20)}; "
        f"open loop at {o['open_loop']['rate_per_s']:g}/s {fmt(opened['p50'], 1)} ms — "
        f"{met(opened['p50'] <= 20)}",
    ]


def _latest(part: str) -> dict[str, Any] | None:
    """The newest raw result under bench/out that has ``part``."""
    for path in sorted(OUT.glob("agents-*.json"), reverse=True):
        data = json.loads(path.read_text(encoding="utf-8")).get(part)
        if data:
            return data
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=("router", "orchestration"), default=None)
    parser.add_argument("--rounds", type=int, default=2000, help="router: rounds")
    parser.add_argument("--seed", type=int, default=7, help="router: first seed")
    parser.add_argument("--repeats", type=int, default=10, help="router: seeds to run")
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.rounds < 100 or args.repeats < 1:
        parser.error("--rounds must be at least 100 and --repeats at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result: dict[str, Any] = {"command": ["bench/agents.py", *(argv or sys.argv[1:])]}
    if args.only in (None, "router"):
        result["router"] = router_bench(args.rounds, args.seed, args.repeats)
    if args.only in (None, "orchestration"):
        result["orchestration"] = orchestration_bench()
    path = save_run(result, OUT, "agents")
    logger.info("raw results: %s", path)
    if not args.no_results:
        router = result.get("router")
        router = {**router, "raw": str(path.relative_to(REPO))} if router else _latest("router")
        orch = result.get("orchestration") or _latest("orchestration")
        write_section(RESULTS, "Agents", section(router, orch))
        logger.info("updated %s", RESULTS)
    for name, ok in (result.get("router") or {}).get("targets", {}).items():
        logger.info("target %s: %s", name, "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
