// Router: how an agent graph's learned routers are doing — decisions over time per route,
// the reward over rounds, each arm's counts, reward and propensity, the estimated regret
// against the best single arm, and the off-policy estimates of other policies — each figure
// with one plain sentence saying what it means.
import { html, usePoll, ErrorBox, Loading, Empty, Table, Badge, Chart } from '../lib/ui.js';
import { api, seg } from '../lib/api.js';
import { t, fmtNum } from '../lib/i18n.js';
import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';

export const strings = {
  zh: {
    'router.title': '学习型路由器',
    'router.intro': '路由器为每个请求挑选一条处理路线，并根据用户评分不断学习。这里展示它选了什么、效果如何、与其他选法相比好不好。',
    'router.graph': '智能体流程',
    'router.pick': '请选择一个流程',
    'router.no_router': '（无路由器）',
    'router.no_graphs': '还没有带路由器的智能体流程。',
    'router.none_in_graph': '流程 {graph} 没有路由节点。',
    'router.node': '路由节点 {node}',
    'router.decisions': '决策次数',
    'router.closed': '已评分',
    'router.open': '待评分',
    'router.taught': '预教示例',
    'router.algorithm': '算法',
    'router.floor': '最低探索概率',
    'router.frozen': '已冻结（不再学习）',
    'router.learning': '学习中',
    'router.version': '版本 {version} · 更新 {updates} 次',
    'router.explain_counts': '决策次数是路由器做过的选择总数；已评分的是收到用户反馈、可以用来学习的那部分；预教示例是上线前用标注例句教给它的，不计入决策。',
    'router.chart_decisions': '各路线被选中的次数（累计）',
    'router.explain_decisions': '每条线是一条路线累计被选中的次数：线越陡，说明那段时间路由器越常选它。数据取自最近 {runs} 次运行。',
    'router.no_timeline': '最近的运行里还没有路由决策。',
    'router.chart_reward': '平均奖励随决策推进的变化',
    'router.explain_reward': '把已评分的决策按先后每 {window} 次分为一组，画出每组的平均奖励：曲线上升说明路由器在学会选更好的路线。',
    'router.no_reward': '还没有收到评分，暂时画不出学习曲线。',
    'router.x_decisions': '第几次已评分决策',
    'router.y_reward': '平均奖励',
    'router.arms': '各路线表现',
    'router.explain_arms': '每条路线被选了多少次、用户给的平均奖励，以及路由器选它时的平均概率（倾向度；概率低说明是在试探）。',
    'router.arm': '路线',
    'router.count': '被选次数',
    'router.share': '占比',
    'router.arm_closed': '已评分',
    'router.mean_reward': '平均奖励',
    'router.propensity': '平均倾向度',
    'router.regret': '估计遗憾值',
    'router.explain_regret': '与“一直选 {best}”相比，路由器在最近 {n} 次已评分决策中少得的奖励总和（{regret}）；越小越好，负数表示它按请求挑选比任何固定选择都好。',
    'router.no_regret': '还没有评分，无法估计遗憾值。',
    'router.ope': '候选策略的离线评估',
    'router.explain_ope': '用已记录的决策和评分（逆倾向加权，IPS）估算“如果换一种选法”能得到的平均奖励，不需要真的上线去试。',
    'router.policy': '策略',
    'router.estimate': '估计平均奖励',
    'router.method': '方法',
    'router.confidence': '置信区间（95%）',
    'router.samples': '样本数',
    'router.logged': '当前路由器（实际记录）',
    'router.always': '总是选 {arm}',
    'router.actual': '实际平均',
    'router.no_ci': '未给出',
    'router.ci_note': '“总是选某条路线”的估计由服务端按 IPS 给出，未附置信区间；样本少时请谨慎看待。',
    'router.best': '最佳',
    'router.runs_error': '读取最近运行失败（决策时间线无法显示）：',
    'router.refresh_note': '每 5 秒刷新。',
  },
  en: {
    'router.title': 'Learned routers',
    'router.intro': 'A router picks a route for each request and keeps learning from the users\' ratings. Here is what it picked, how well that went, and how it compares with other ways of choosing.',
    'router.graph': 'Agent graph',
    'router.pick': 'Choose a graph',
    'router.no_router': '(no router)',
    'router.no_graphs': 'No agent graph with a router yet.',
    'router.none_in_graph': 'Graph {graph} has no router node.',
    'router.node': 'Router node {node}',
    'router.decisions': 'Decisions',
    'router.closed': 'Rated',
    'router.open': 'Awaiting rating',
    'router.taught': 'Taught examples',
    'router.algorithm': 'Algorithm',
    'router.floor': 'Exploration floor',
    'router.frozen': 'frozen (no longer learning)',
    'router.learning': 'learning',
    'router.version': 'version {version} · {updates} updates',
    'router.explain_counts': 'Decisions are all the choices the router made; rated ones got user feedback it can learn from; taught examples are labelled sentences it was taught before going live, not counted as decisions.',
    'router.chart_decisions': 'Times each route was chosen (cumulative)',
    'router.explain_decisions': 'Each line counts how often one route has been chosen so far: the steeper it climbs, the more the router picked it then. From the latest {runs} runs.',
    'router.no_timeline': 'No routing decision in the latest runs yet.',
    'router.chart_reward': 'Mean reward as decisions go on',
    'router.explain_reward': 'Rated decisions in order, grouped by {window}, with each group\'s mean reward: a rising curve means the router is learning to pick better routes.',
    'router.no_reward': 'No ratings yet, so no learning curve.',
    'router.x_decisions': 'rated decision number',
    'router.y_reward': 'mean reward',
    'router.arms': 'Routes',
    'router.explain_arms': 'How often each route was chosen, the mean reward users gave, and the mean probability the router chose it with (its propensity; a low one means it was exploring).',
    'router.arm': 'Route',
    'router.count': 'Chosen',
    'router.share': 'Share',
    'router.arm_closed': 'Rated',
    'router.mean_reward': 'Mean reward',
    'router.propensity': 'Mean propensity',
    'router.regret': 'Estimated regret',
    'router.explain_regret': 'The reward the router gave up over its last {n} rated decisions against always choosing {best} ({regret}); lower is better, and below zero it beats every fixed choice by choosing per request.',
    'router.no_regret': 'No ratings yet, so no regret estimate.',
    'router.ope': 'Off-policy evaluation of candidate policies',
    'router.explain_ope': 'From the logged decisions and ratings (inverse propensity scoring, IPS) it estimates the mean reward another way of choosing would have earned, without trying it live.',
    'router.policy': 'Policy',
    'router.estimate': 'Estimated mean reward',
    'router.method': 'Method',
    'router.confidence': '95% interval',
    'router.samples': 'Samples',
    'router.logged': 'This router (as logged)',
    'router.always': 'Always {arm}',
    'router.actual': 'actual mean',
    'router.no_ci': 'not given',
    'router.ci_note': 'The server gives the "always one route" estimates by IPS without an interval; read them with care while there are few samples.',
    'router.best': 'best',
    'router.runs_error': 'Could not read the latest runs (no decision timeline):',
    'router.refresh_note': 'Refreshes every 5 seconds.',
  },
};

const CSS = `
.rt-figs { display: flex; flex-wrap: wrap; gap: .75rem 2rem; margin: .5rem 0; }
.rt-fig { display: flex; flex-direction: column; }
.rt-fig strong { font-size: 1.6rem; line-height: 1.2; }
.rt-fig span { color: var(--pico-muted-color); font-size: .85rem; }
.rt-explain { color: var(--pico-muted-color); font-size: .88rem; margin: .1rem 0 .75rem; }
.rt-node { margin-bottom: 2.5rem; }
.rt-regret strong { font-size: 2rem; }
tr.rt-best td { font-weight: 600; }
`;

const POLL_MS = 5000;
const RUNS_MS = 10000;
const RECENT_RUNS = 60;

/** The route events of the graph's latest runs, oldest first: [{t, router, arm, propensity}]. */
function useTimeline(graph) {
  const cache = useRef(new Map());
  const [state, setState] = useState({ decisions: [], runs: 0, error: null });
  useEffect(() => {
    let live = true;
    cache.current = new Map();
    const load = async () => {
      try {
        const list = await api.get(`/v1/agents/runs?graph=${seg(graph)}&limit=${RECENT_RUNS}`);
        const runs = (list.data || []).slice(0, RECENT_RUNS);
        const todo = runs.filter((r) => !cache.current.has(r.id));
        for (let i = 0; i < todo.length; i += 4) {
          await Promise.all(
            todo.slice(i, i + 4).map(async (r) => {
              const run = await api.get(`/v1/agents/runs/${seg(r.id)}`);
              const routes = (run.events || []).filter((e) => e.type === 'route' && (!e.router || e.router.startsWith(`${graph}/`)));
              // A run still starting may not have routed yet: read it again next time.
              if (routes.length || !['running', 'queued'].includes(run.status)) {
                cache.current.set(r.id, routes.map((e) => ({ t: r.created, router: e.router, node: e.node, arm: e.arm, propensity: e.propensity })));
              }
            }),
          );
        }
        const decisions = runs.flatMap((r) => cache.current.get(r.id) || []).sort((a, b) => a.t - b.t);
        if (live) setState({ decisions, runs: runs.length, error: null });
      } catch (error) {
        if (live) setState((s) => ({ ...s, error }));
      }
    };
    load();
    const id = setInterval(() => document.visibilityState === 'visible' && load(), RUNS_MS);
    return () => {
      live = false;
      clearInterval(id);
    };
  }, [graph]);
  return state;
}

/** A line chart over a plain (not time) x axis: the learning curve. */
function SeqChart({ x, series, xLabel, yLabel, testid, title, height = 220 }) {
  const box = useRef(null);
  useEffect(() => {
    if (!box.current || !x.length) return undefined;
    const palette = ['#2b8a3e', '#1f6feb', '#d9480f'];
    const plot = new uPlot(
      {
        width: Math.max(260, box.current.clientWidth || 600),
        height,
        scales: { x: { time: false } },
        axes: [{ label: xLabel }, { label: yLabel }],
        series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, stroke: palette[i % 3], width: 2, points: { show: true } }))],
      },
      [x, ...series.map((s) => s.values)],
      box.current,
    );
    const resize = () => box.current && plot.setSize({ width: Math.max(260, box.current.clientWidth), height });
    window.addEventListener('resize', resize);
    return () => {
      window.removeEventListener('resize', resize);
      plot.destroy();
    };
  }, [JSON.stringify([x, series]), height]);
  return html`<figure class="chart" data-testid=${testid}>
    <figcaption>${title}</figcaption>
    ${x.length ? html`<div ref=${box}></div>` : html`<${Empty} text=${t('router.no_reward')} />`}
  </figure>`;
}

function DecisionsChart({ decisions, arms, runs, node }) {
  const mine = decisions.filter((d) => d.node === node || (d.router && d.router.endsWith(`/${node}`)));
  const names = [...new Set([...arms, ...mine.map((d) => d.arm)])];
  const x = [];
  const counts = Object.fromEntries(names.map((a) => [a, []]));
  const running = Object.fromEntries(names.map((a) => [a, 0]));
  for (const d of mine) {
    running[d.arm] += 1;
    if (x.length && x[x.length - 1] === d.t) {
      for (const a of names) counts[a][x.length - 1] = running[a];
    } else {
      x.push(d.t);
      for (const a of names) counts[a].push(running[a]);
    }
  }
  return html`<${Chart} testid=${`router-decisions-chart-${node}`} title=${t('router.chart_decisions')}
      x=${x} series=${names.map((a) => ({ label: a, values: counts[a] }))} yLabel=${t('router.decisions')} />
    <p class="rt-explain">${mine.length ? t('router.explain_decisions', { runs }) : t('router.no_timeline')}</p>`;
}

function Figure({ label, value, testid }) {
  return html`<div class="rt-fig"><strong data-testid=${testid}>${value}</strong><span>${label}</span></div>`;
}

function Ope({ r }) {
  const learn = r.learning || {};
  const rows = [{ key: 'logged', policy: t('router.logged'), value: learn.mean_reward, method: t('router.actual'), n: learn.closed, ci: null }];
  for (const [arm, v] of Object.entries(learn.ips_value || {})) {
    rows.push({ key: `arm-${arm}`, policy: t('router.always', { arm }), value: v, method: 'IPS', n: learn.closed, ci: null, best: arm === learn.best_arm });
  }
  // Candidate policies the server evaluated, when it gives them ({name: report} or [report]).
  const extra = r.ope || r.candidates || r.off_policy;
  const list = Array.isArray(extra) ? extra : Object.entries(extra || {}).map(([name, v]) => ({ name, ...v }));
  for (const c of list) {
    for (const m of ['dr', 'snips', 'ips']) {
      const e = c[m];
      if (!e || typeof e !== 'object') continue;
      rows.push({ key: `${c.name}-${m}`, policy: c.name || c.candidate || '—', value: e.value, method: m.toUpperCase(), n: e.n, ci: e.stderr === undefined ? null : [e.value - 1.96 * e.stderr, e.value + 1.96 * e.stderr] });
    }
  }
  if (!learn.closed && !list.length) return null;
  return html`<section><h4>${t('router.ope')}</h4>
    <p class="rt-explain">${t('router.explain_ope')}</p>
    <${Table} testid=${`router-ope-${r.node}`} rows=${rows} rowKey=${(x) => x.key}
      columns=${[
        { key: 'policy', label: t('router.policy'), render: (x) => html`${x.policy}${x.best ? html` <${Badge} tone="ok" text=${t('router.best')} />` : ''}` },
        { key: 'value', label: t('router.estimate'), render: (x) => fmtNum(x.value, 3) },
        { key: 'method', label: t('router.method') },
        { key: 'ci', label: t('router.confidence'), render: (x) => (x.ci ? `${fmtNum(x.ci[0], 3)} – ${fmtNum(x.ci[1], 3)}` : html`<span class="muted">${t('router.no_ci')}</span>`) },
        { key: 'n', label: t('router.samples'), render: (x) => fmtNum(x.n) },
      ]} />
    ${!list.length && html`<p class="rt-explain">${t('router.ci_note')}</p>`}</section>`;
}

function RouterNode({ r, timeline }) {
  const learn = r.learning || {};
  const arms = Object.entries(r.arms || {}).map(([arm, v]) => ({ arm, ...v }));
  const total = arms.reduce((s, a) => s + (a.count || 0), 0);
  const props = {};
  for (const d of timeline.decisions) {
    if (d.node !== r.node || typeof d.propensity !== 'number') continue;
    (props[d.arm] = props[d.arm] || []).push(d.propensity);
  }
  const meanProp = (arm) => (props[arm] ? props[arm].reduce((s, p) => s + p, 0) / props[arm].length : null);
  const curve = learn.reward_by_window || [];
  const w = learn.window || 10;
  const x = curve.map((_, i) => Math.min((i + 1) * w, learn.closed || (i + 1) * w));
  return html`<article class="rt-node" data-testid=${`router-node-${r.node}`}>
    <header><strong>${t('router.node', { node: r.node })}</strong>
      <span class="muted"> · ${t('router.algorithm')}: ${r.algorithm} · ${t('router.floor')}: ${fmtNum(r.floor, 3)} ·
      ${r.frozen ? t('router.frozen') : t('router.learning')} · ${t('router.version', { version: r.version ?? '—', updates: r.updates ?? 0 })}</span></header>
    <div class="rt-figs">
      <${Figure} label=${t('router.decisions')} value=${fmtNum(r.decisions || 0)} testid=${`router-decisions-${r.node}`} />
      <${Figure} label=${t('router.closed')} value=${fmtNum(r.closed || 0)} testid=${`router-closed-${r.node}`} />
      <${Figure} label=${t('router.open')} value=${fmtNum(r.open || 0)} testid=${`router-open-${r.node}`} />
      <${Figure} label=${t('router.taught')} value=${fmtNum(r.taught || 0)} testid=${`router-taught-${r.node}`} />
      <div class="rt-fig rt-regret"><strong data-testid=${`router-regret-${r.node}`}>${learn.estimated_regret === null || learn.estimated_regret === undefined ? '—' : fmtNum(learn.estimated_regret, 2)}</strong>
        <span>${t('router.regret')}</span></div>
    </div>
    <p class="rt-explain">${t('router.explain_counts')}</p>
    <p class="rt-explain" data-testid=${`router-regret-explain-${r.node}`}>${learn.estimated_regret === null || learn.estimated_regret === undefined
      ? t('router.no_regret')
      : t('router.explain_regret', { best: learn.best_arm, n: learn.closed, regret: fmtNum(learn.estimated_regret, 2) })}</p>
    <div class="grid-even">
      <div><${DecisionsChart} decisions=${timeline.decisions} arms=${Object.keys(r.arms || {})} runs=${timeline.runs} node=${r.node} /></div>
      <div><${SeqChart} testid=${`router-reward-chart-${r.node}`} title=${t('router.chart_reward')} x=${x}
          series=${[{ label: t('router.y_reward'), values: curve }]} xLabel=${t('router.x_decisions')} yLabel=${t('router.y_reward')} />
        <p class="rt-explain">${t('router.explain_reward', { window: w })}</p></div>
    </div>
    <h4>${t('router.arms')}</h4>
    <p class="rt-explain">${t('router.explain_arms')}</p>
    <${Table} testid=${`router-arms-${r.node}`} rows=${arms} rowKey=${(a) => a.arm}
      columns=${[
        { key: 'arm', label: t('router.arm'), render: (a) => html`<span data-testid=${`router-arm-${r.node}-${a.arm}`}>${a.arm}</span>` },
        { key: 'count', label: t('router.count'), render: (a) => html`<span data-testid=${`router-arm-count-${r.node}-${a.arm}`}>${fmtNum(a.count || 0)}</span>` },
        { key: 'share', label: t('router.share'), render: (a) => (total ? `${fmtNum((100 * (a.count || 0)) / total, 1)}%` : '—') },
        { key: 'closed', label: t('router.arm_closed'), render: (a) => fmtNum(a.closed || 0) },
        { key: 'mean_reward', label: t('router.mean_reward'), render: (a) => fmtNum(a.mean_reward, 3) },
        { key: 'propensity', label: t('router.propensity'), render: (a) => fmtNum(meanProp(a.arm), 3) },
      ]} />
    <${Ope} r=${r} />
  </article>`;
}

function GraphRouters({ graph }) {
  const state = usePoll(() => api.get(`/v1/agents/${seg(graph)}/routers`), POLL_MS, [graph]);
  const timeline = useTimeline(graph);
  const data = (state.data && state.data.data) || [];
  return html`<${ErrorBox} error=${state.error} testid="router-error" />
    <${Loading} when=${!state.data && state.loading} />
    ${timeline.error && html`<p class="error" data-testid="router-runs-error">${t('router.runs_error')} ${timeline.error.message}</p>`}
    ${state.data && !data.length && html`<${Empty} text=${t('router.none_in_graph', { graph })} />`}
    ${state.data && data.length > 0 && html`<p class="muted"><small>${t('router.refresh_note')}</small></p>`}
    ${data.map((r) => html`<${RouterNode} key=${r.node} r=${r} timeline=${timeline} />`)}`;
}

export default function Page({ args, navigate }) {
  const graph = args[0] || '';
  const graphs = usePoll(() => api.get('/v1/agents'), 0, []);
  const list = (graphs.data && graphs.data.data) || [];
  const withRouter = list.filter((g) => (g.routers || []).length);
  useEffect(() => {
    if (!graph && withRouter.length === 1) navigate('router', withRouter[0].id);
  }, [graph, withRouter.length]);
  return html`<style>${CSS}</style>
    <h2>${t('router.title')}</h2>
    <p class="muted">${t('router.intro')}</p>
    <${ErrorBox} error=${graphs.error} testid="router-graphs-error" />
    <div class="toolbar"><label>${t('router.graph')}
      <select data-testid="router-graph" value=${graph} onChange=${(e) => e.target.value && navigate('router', e.target.value)}>
        <option value="" disabled>${t('router.pick')}</option>
        ${list.map((g) => html`<option value=${g.id} disabled=${!(g.routers || []).length}>${g.id}${(g.routers || []).length ? '' : ` ${t('router.no_router')}`}</option>`)}
      </select></label></div>
    ${graphs.data && !withRouter.length && html`<${Empty} text=${t('router.no_graphs')} />`}
    ${graph && html`<${GraphRouters} key=${graph} graph=${graph} />`}`;
}
