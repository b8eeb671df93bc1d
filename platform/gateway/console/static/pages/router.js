// Router: how an agent graph's learned routers are doing — decisions per route over time and
// the rewards that came back (from the API's timeline), each arm's counts, reward and logged
// propensity, the estimated regret against the best single arm, the learning curve, and the
// off-policy comparison of candidate policies (IPS, SNIPS, doubly robust, each with its 95 %
// interval) — each figure with one plain sentence saying what it means.
import { html, usePoll, ErrorBox, Loading, Empty, Table, Badge, Chart } from '../lib/ui.js';
import { api, seg } from '../lib/api.js';
import { t, fmtNum, fmtTime } from '../lib/i18n.js';
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
    'router.not_yet': '这个路由器还没有做过决策（流程第一次运行时才会启用）。',
    'router.window': '时间范围',
    'router.w_1h': '最近 1 小时',
    'router.w_6h': '最近 6 小时',
    'router.w_24h': '最近 24 小时',
    'router.w_7d': '最近 7 天',
    'router.w_30d': '最近 30 天',
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
    'router.chart_decisions': '各路线每个时段被选中的次数',
    'router.explain_decisions': '横轴是时间，每个时段 {bucket}；每条线是一条路线在该时段被选中的次数。',
    'router.window_total': '这段时间共 {n} 次决策：',
    'router.no_timeline': '这段时间里没有路由决策。',
    'router.chart_reward': '每个时段收到的奖励（平均）',
    'router.explain_reward': '决策收到评分时计入奖励；每个点是该时段内收到的奖励的平均值（“全部”一条和每条路线各一条），没有奖励的时段不画点。这段时间共收到 {n} 个奖励。',
    'router.all_arms': '全部',
    'router.reward': '平均奖励',
    'router.chart_learning': '学习曲线：平均奖励随决策推进的变化',
    'router.explain_learning': '把已评分的决策按先后每 {window} 次分为一组，画出每组的平均奖励：曲线上升说明路由器在学会选更好的路线。',
    'router.no_learning': '还没有收到评分，暂时画不出学习曲线。',
    'router.x_decisions': '第几次已评分决策',
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
    'router.explain_ope': '取最近 {n2} 次已评分决策，分成前后两半：需要学习的候选策略先用前一半学习，所有候选都在后一半（{n} 次）上估算“当时若用它，平均奖励会是多少”，不必真的上线去试。IPS 按被选中概率的倒数加权；SNIPS 是它的归一化版本，更稳定；双稳健（DR）再结合一个奖励模型，通常最可靠。“±”后是 95% 置信区间的半宽。',
    'router.ope_wait': '已评分决策还不够：离线评估至少需要 {min} 次，目前有 {closed} 次。',
    'router.ope_off': '离线评估未计算。',
    'router.ope_clear': '按双稳健估计，最好的是「{best}」：{value}（95% 区间 {lo} 至 {hi}）；当前路由器实际为 {logged}（区间 {llo} 至 {lhi}）。两个区间不重叠，以 {n} 个样本看，这个差别是可信的。',
    'router.ope_overlap': '按双稳健估计，最好的是「{best}」：{value}（95% 区间 {lo} 至 {hi}）；当前路由器实际为 {logged}（区间 {llo} 至 {lhi}）。两个区间有重叠，只凭这 {n} 个样本还不能断定哪个更好，需要更多评分。',
    'router.ope_stale': '（{time} 计算；之后的新决策会在半分钟内计入。）',
    'router.policy': '策略',
    'router.dr': '双稳健 DR',
    'router.samples': '样本数',
    'router.ess': '有效样本',
    'router.logged': '当前路由器（实际记录）',
    'router.actual': '实际平均',
    'router.best': '最佳',
    'router.c_current': '当前设置（{algo}，α={alpha}，最低探索 {floor}），用前一半重新学习',
    'router.c_alpha_less': '少探索：α 改为 {alpha}',
    'router.c_alpha_more': '多探索：α 改为 {alpha}',
    'router.c_floor': '最低探索概率改为 {floor}',
    'router.c_floor0': '最低探索概率改为 0（从不随机挑选）',
    'router.c_algorithm': '改用 {algo}（默认 α={alpha}）',
    'router.c_uniform': '随机：每条路线机会均等',
    'router.c_always': '总是选 {arm}',
    'router.a_linucb': 'LinUCB 上置信界',
    'router.a_thompson': 'Thompson 采样',
    'router.minutes': '{n} 分钟',
    'router.hours': '{n} 小时',
    'router.seconds': '{n} 秒',
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
    'router.not_yet': 'This router has made no decision yet (it starts with the graph\'s first run).',
    'router.window': 'Window',
    'router.w_1h': 'Last hour',
    'router.w_6h': 'Last 6 hours',
    'router.w_24h': 'Last 24 hours',
    'router.w_7d': 'Last 7 days',
    'router.w_30d': 'Last 30 days',
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
    'router.chart_decisions': 'Times each route was chosen, per period',
    'router.explain_decisions': 'Time runs along the bottom in periods of {bucket}; each line counts how often one route was chosen in each period.',
    'router.window_total': '{n} decisions in this window:',
    'router.no_timeline': 'No routing decision in this window.',
    'router.chart_reward': 'Rewards received per period (mean)',
    'router.explain_reward': 'A reward counts when its decision is rated; each point is the mean of the rewards received in that period (one line for all routes, one per route), and periods without a reward have no point. {n} rewards in this window.',
    'router.all_arms': 'all',
    'router.reward': 'mean reward',
    'router.chart_learning': 'Learning curve: mean reward as decisions go on',
    'router.explain_learning': 'Rated decisions in order, grouped by {window}, with each group\'s mean reward: a rising curve means the router is learning to pick better routes.',
    'router.no_learning': 'No ratings yet, so no learning curve.',
    'router.x_decisions': 'rated decision number',
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
    'router.explain_ope': 'The latest {n2} rated decisions are split in two halves: candidates that learn are trained on the older half, and every candidate is scored on the newer half ({n} decisions) — the mean reward it would have earned had it been choosing then, without trying it live. IPS weights each reward by the inverse of its logged probability; SNIPS normalises those weights and is steadier; doubly robust (DR) adds a reward model and is usually the most reliable. The figure after ± is half the 95% interval.',
    'router.ope_wait': 'Not enough rated decisions yet: off-policy evaluation needs at least {min}, there are {closed}.',
    'router.ope_off': 'Off-policy evaluation was not computed.',
    'router.ope_clear': 'By the doubly robust estimate the best is "{best}": {value} (95% interval {lo} to {hi}), against {logged} for the router as logged (interval {llo} to {lhi}). The intervals do not overlap: with {n} samples the difference is real.',
    'router.ope_overlap': 'By the doubly robust estimate the best is "{best}": {value} (95% interval {lo} to {hi}), against {logged} for the router as logged (interval {llo} to {lhi}). The intervals overlap: {n} samples cannot tell them apart yet; more ratings are needed.',
    'router.ope_stale': '(Computed at {time}; newer decisions are counted within half a minute.)',
    'router.policy': 'Policy',
    'router.dr': 'Doubly robust (DR)',
    'router.samples': 'Samples',
    'router.ess': 'Effective samples',
    'router.logged': 'This router (as logged)',
    'router.actual': 'actual mean',
    'router.best': 'best',
    'router.c_current': 'Current settings ({algo}, α={alpha}, floor {floor}), retrained on the older half',
    'router.c_alpha_less': 'Explore less: α = {alpha}',
    'router.c_alpha_more': 'Explore more: α = {alpha}',
    'router.c_floor': 'Exploration floor {floor}',
    'router.c_floor0': 'Exploration floor 0 (never picks at random)',
    'router.c_algorithm': 'Switch to {algo} (default α={alpha})',
    'router.c_uniform': 'Random: every route alike',
    'router.c_always': 'Always {arm}',
    'router.a_linucb': 'LinUCB',
    'router.a_thompson': 'Thompson sampling',
    'router.minutes': '{n} min',
    'router.hours': '{n} h',
    'router.seconds': '{n} s',
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
.rt-counts span { margin-right: 1rem; white-space: nowrap; }
.rt-ci { white-space: nowrap; }
.rt-verdict { font-size: .95rem; margin: .5rem 0 1rem; }
.rt-node table.striped tbody tr.selected td { background: #e3f2e6; font-weight: 600; }
`;

const POLL_MS = 5000;
const BUCKETS = 48;
/** window_s → its label key. */
const WINDOWS = [[3600, 'router.w_1h'], [6 * 3600, 'router.w_6h'], [86400, 'router.w_24h'], [7 * 86400, 'router.w_7d'], [30 * 86400, 'router.w_30d']];
const ALGO = { linucb: 'router.a_linucb', thompson: 'router.a_thompson' };
const Z95 = 1.96;

const algoName = (a) => (ALGO[a] ? t(ALGO[a]) : a);

/** A bucket width in words: 30 分钟 / 2 h. */
function duration(s) {
  if (s >= 3600 && s % 3600 === 0) return t('router.hours', { n: s / 3600 });
  if (s >= 60) return t('router.minutes', { n: fmtNum(s / 60, 1) });
  return t('router.seconds', { n: fmtNum(s, 0) });
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
    ${x.length ? html`<div ref=${box}></div>` : html`<${Empty} text=${t('router.no_learning')} />`}
  </figure>`;
}

/** Decisions per period per route, and the window's totals, all from the API's timeline. */
function DecisionsChart({ node, timeline }) {
  const arms = Object.keys(timeline.decisions || {});
  const totals = Object.fromEntries(arms.map((a) => [a, timeline.decisions[a].reduce((s, n) => s + n, 0)]));
  const total = arms.reduce((s, a) => s + totals[a], 0);
  // Keyed by a label: the chart is drawn again in the other language.
  return html`<${Chart} key=${t('router.decisions')} testid=${`router-decisions-chart-${node}`} title=${t('router.chart_decisions')}
      x=${timeline.t} series=${arms.map((a) => ({ label: a, values: timeline.decisions[a] }))} yLabel=${t('router.decisions')} />
    <p class="rt-explain">${t('router.explain_decisions', { bucket: duration(timeline.bucket_s) })}</p>
    ${total
      ? html`<p class="rt-counts"><small><span data-testid=${`router-window-total-${node}`} data-count=${total}>${t('router.window_total', { n: fmtNum(total) })}</span>
        ${arms.map((a) => html`<span>${a} <strong data-testid=${`router-window-count-${node}-${a}`}>${fmtNum(totals[a])}</strong></span>`)}</small></p>`
      : html`<p class="rt-explain" data-testid=${`router-window-total-${node}`} data-count="0">${t('router.no_timeline')}</p>`}`;
}

/** The mean reward received per period: all routes, then one line per route. */
function RewardChart({ node, timeline }) {
  const arms = Object.keys(timeline.arm_reward || {});
  const received = (timeline.rewards || []).reduce((s, n) => s + n, 0);
  const series = [{ label: t('router.all_arms'), values: timeline.mean_reward, stroke: '#222' },
    ...arms.map((a) => ({ label: a, values: timeline.arm_reward[a] }))];
  return html`<${Chart} key=${t('router.reward')} testid=${`router-reward-chart-${node}`} title=${t('router.chart_reward')}
      x=${timeline.t} series=${series} yLabel=${t('router.reward')} />
    <p class="rt-explain" data-testid=${`router-window-rewards-${node}`} data-count=${received}>${t('router.explain_reward', { n: fmtNum(received) })}</p>`;
}

function Figure({ label, value, testid }) {
  return html`<div class="rt-fig"><strong data-testid=${testid}>${value}</strong><span>${label}</span></div>`;
}

/** A candidate's name in the reader's language, from its kind and changes. */
function candidateLabel(c, config) {
  const ch = c.changes || {};
  if (c.kind === 'current') return t('router.c_current', { algo: algoName(config.algorithm), alpha: fmtNum(config.alpha, 3), floor: fmtNum(config.floor, 3) });
  if (c.kind === 'always') return t('router.c_always', { arm: ch.arm });
  if (c.kind === 'uniform') return t('router.c_uniform');
  if (c.kind === 'algorithm') return t('router.c_algorithm', { algo: algoName(ch.algorithm), alpha: fmtNum(ch.alpha, 3) });
  if ('alpha' in ch) return t(ch.alpha < config.alpha ? 'router.c_alpha_less' : 'router.c_alpha_more', { alpha: fmtNum(ch.alpha, 3) });
  if ('floor' in ch) return ch.floor === 0 ? t('router.c_floor0') : t('router.c_floor', { floor: fmtNum(ch.floor, 3) });
  return c.description || c.name;
}

const interval = (e) => (e && e.value !== null && e.stderr !== null ? [e.value - Z95 * e.stderr, e.value + Z95 * e.stderr] : null);

/** "0.812 ± 0.051", the interval's bounds in its title. */
function Estimate({ e, testid }) {
  if (!e || e.value === null || e.value === undefined) return html`<span data-testid=${testid}>—</span>`;
  const ci = interval(e);
  return html`<span class="rt-ci" data-testid=${testid} data-value=${e.value} data-lo=${ci ? ci[0] : ''} data-hi=${ci ? ci[1] : ''}
      title=${ci ? `${fmtNum(ci[0], 3)} – ${fmtNum(ci[1], 3)}` : ''}>${fmtNum(e.value, 3)}${ci ? ` ± ${fmtNum(Z95 * e.stderr, 3)}` : ''}</span>`;
}

/** The plain sentence under the table: which candidate is best and how sure that is. */
function verdict(ope, label) {
  const best = ope.candidates.find((c) => c.name === ope.best);
  if (!best || !ope.logged) return '';
  const ci = interval(best.dr) || [best.dr.value, best.dr.value];
  const lci = interval(ope.logged) || [ope.logged.value, ope.logged.value];
  const apart = ci[0] > lci[1] || ci[1] < lci[0];
  return t(apart ? 'router.ope_clear' : 'router.ope_overlap', {
    best: label(best), value: fmtNum(best.dr.value, 3), lo: fmtNum(ci[0], 3), hi: fmtNum(ci[1], 3),
    logged: fmtNum(ope.logged.value, 3), llo: fmtNum(lci[0], 3), lhi: fmtNum(lci[1], 3), n: fmtNum(ope.n),
  });
}

function Ope({ r }) {
  const ope = r.ope;
  const node = r.node;
  if (!ope) return html`<section><h4>${t('router.ope')}</h4><p class="rt-explain">${t('router.ope_off')}</p></section>`;
  if (!ope.candidates.length) {
    return html`<section><h4>${t('router.ope')}</h4>
      <p class="rt-explain" data-testid=${`router-ope-wait-${node}`}>${t('router.ope_wait', { min: ope.min_closed, closed: fmtNum(r.closed || 0) })}</p></section>`;
  }
  const label = (c) => candidateLabel(c, r.config || {});
  const rows = [{ name: 'logged', logged: true }, ...ope.candidates];
  const cell = (m) => (x) => (x.logged
    ? (m === 'dr' ? html`<${Estimate} e=${ope.logged} testid=${`router-ope-logged-${node}`} /> <small class="muted">${t('router.actual')}</small>` : '—')
    : html`<${Estimate} e=${x[m]} testid=${`router-ope-${m}-${node}-${x.name}`} />`);
  return html`<section><h4>${t('router.ope')}</h4>
    <p class="rt-explain">${t('router.explain_ope', { n: fmtNum(ope.n), n2: fmtNum(ope.n * 2) })}</p>
    <${Table} testid=${`router-ope-${node}`} rows=${rows} rowKey=${(x) => x.name} selected=${ope.best}
      columns=${[
        { key: 'policy', label: t('router.policy'), render: (x) => html`<span data-testid=${`router-ope-name-${node}-${x.name}`}>${x.logged ? t('router.logged') : label(x)}</span>${x.name === ope.best ? html` <${Badge} tone="ok" text=${t('router.best')} testid=${`router-ope-best-${node}`} />` : ''}` },
        { key: 'ips', label: 'IPS', render: cell('ips') },
        { key: 'snips', label: 'SNIPS', render: cell('snips') },
        { key: 'dr', label: t('router.dr'), render: cell('dr') },
        { key: 'ess', label: t('router.ess'), render: (x) => (x.logged ? '—' : fmtNum(x.dr.ess, 0)) },
        { key: 'n', label: t('router.samples'), render: (x) => fmtNum(x.logged ? ope.logged.n : x.n) },
      ]} />
    <p class="rt-verdict" data-testid=${`router-ope-explain-${node}`}>${verdict(ope, label)}
      ${ope.stale ? html` <small class="muted">${t('router.ope_stale', { time: fmtTime(ope.computed_at) })}</small>` : ''}</p></section>`;
}

function RouterNode({ r }) {
  const learn = r.learning || {};
  const arms = Object.entries(r.arms || {}).map(([arm, v]) => ({ arm, ...v }));
  const total = arms.reduce((s, a) => s + (a.count || 0), 0);
  const curve = learn.reward_by_window || [];
  const w = learn.window || 10;
  const x = curve.map((_, i) => Math.min((i + 1) * w, learn.closed || (i + 1) * w));
  const regret = learn.estimated_regret;
  return html`<article class="rt-node" data-testid=${`router-node-${r.node}`}>
    <header><strong>${t('router.node', { node: r.node })}</strong>
      ${r.algorithm && html`<span class="muted">${[
        '', `${t('router.algorithm')}: ${algoName(r.algorithm)}`, `${t('router.floor')}: ${fmtNum(r.floor, 3)}`,
        r.frozen ? t('router.frozen') : t('router.learning'), t('router.version', { version: r.version ?? '—', updates: r.updates ?? 0 }),
      ].join(' · ')}</span>`}</header>
    <div class="rt-figs">
      <${Figure} label=${t('router.decisions')} value=${fmtNum(r.decisions || 0)} testid=${`router-decisions-${r.node}`} />
      <${Figure} label=${t('router.closed')} value=${fmtNum(r.closed || 0)} testid=${`router-closed-${r.node}`} />
      <${Figure} label=${t('router.open')} value=${fmtNum(r.open || 0)} testid=${`router-open-${r.node}`} />
      <${Figure} label=${t('router.taught')} value=${fmtNum(r.taught || 0)} testid=${`router-taught-${r.node}`} />
      <div class="rt-fig rt-regret"><strong data-testid=${`router-regret-${r.node}`}>${regret === null || regret === undefined ? '—' : fmtNum(regret, 2)}</strong>
        <span>${t('router.regret')}</span></div>
    </div>
    <p class="rt-explain">${t('router.explain_counts')}</p>
    <p class="rt-explain" data-testid=${`router-regret-explain-${r.node}`}>${regret === null || regret === undefined
      ? t('router.no_regret')
      : t('router.explain_regret', { best: learn.best_arm, n: learn.closed, regret: fmtNum(regret, 2) })}</p>
    ${r.timeline
      ? html`<div class="grid-even">
          <div><${DecisionsChart} node=${r.node} timeline=${r.timeline} /></div>
          <div><${RewardChart} node=${r.node} timeline=${r.timeline} /></div>
        </div>`
      : html`<${Empty} text=${t('router.not_yet')} />`}
    <h4>${t('router.arms')}</h4>
    <p class="rt-explain">${t('router.explain_arms')}</p>
    <${Table} testid=${`router-arms-${r.node}`} rows=${arms} rowKey=${(a) => a.arm}
      columns=${[
        { key: 'arm', label: t('router.arm'), render: (a) => html`<span data-testid=${`router-arm-${r.node}-${a.arm}`}>${a.arm}</span>` },
        { key: 'count', label: t('router.count'), render: (a) => html`<span data-testid=${`router-arm-count-${r.node}-${a.arm}`}>${fmtNum(a.count || 0)}</span>` },
        { key: 'share', label: t('router.share'), render: (a) => (total ? `${fmtNum((100 * (a.count || 0)) / total, 1)}%` : '—') },
        { key: 'closed', label: t('router.arm_closed'), render: (a) => fmtNum(a.closed || 0) },
        { key: 'mean_reward', label: t('router.mean_reward'), render: (a) => fmtNum(a.mean_reward, 3) },
        { key: 'propensity', label: t('router.propensity'), render: (a) => html`<span data-testid=${`router-arm-propensity-${r.node}-${a.arm}`}>${fmtNum(a.mean_propensity, 3)}</span>` },
      ]} />
    <${Ope} r=${r} />
    <${SeqChart} key=${t('router.x_decisions')} testid=${`router-learning-chart-${r.node}`} title=${t('router.chart_learning')} x=${x}
      series=${[{ label: t('router.reward'), values: curve }]} xLabel=${t('router.x_decisions')} yLabel=${t('router.reward')} />
    <p class="rt-explain">${t('router.explain_learning', { window: w })}</p>
  </article>`;
}

function GraphRouters({ graph, windowS }) {
  const state = usePoll(() => api.get(`/v1/agents/${seg(graph)}/routers?window_s=${windowS}&buckets=${BUCKETS}`), POLL_MS, [graph, windowS]);
  const data = (state.data && state.data.data) || [];
  return html`<${ErrorBox} error=${state.error} testid="router-error" />
    <${Loading} when=${!state.data && state.loading} />
    ${state.data && !data.length && html`<${Empty} text=${t('router.none_in_graph', { graph })} />`}
    ${state.data && data.length > 0 && html`<p class="muted"><small>${t('router.refresh_note')}</small></p>`}
    ${data.map((r) => html`<${RouterNode} key=${r.node} r=${r} />`)}`;
}

export default function Page({ args, navigate }) {
  const graph = args[0] || '';
  const [windowS, setWindowS] = useState(86400);
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
      </select></label>
      <label>${t('router.window')}
      <select data-testid="router-window" value=${windowS} onChange=${(e) => setWindowS(Number(e.target.value))}>
        ${WINDOWS.map(([s, key]) => html`<option value=${s}>${t(key)}</option>`)}
      </select></label></div>
    ${graphs.data && !withRouter.length && html`<${Empty} text=${t('router.no_graphs')} />`}
    ${graph && html`<${GraphRouters} key=${graph} graph=${graph} windowS=${windowS} />`}`;
}
