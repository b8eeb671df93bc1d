// Metrics: per deployment over a chosen window — requests, errors and 429s, tokens/s, time to
// first token p50/p95 — from the platform's own counts (GET /v1/metrics/series), with a
// table of the window's totals, and a link to the Ray dashboard for the cluster's view.
import { html, usePoll, ErrorBox, Loading, Empty, Table, Chart } from '../lib/ui.js';
import { api, seg, session } from '../lib/api.js';
import { t, fmtNum, fmtMs } from '../lib/i18n.js';
import { useRef, useState } from 'preact/hooks';

export const strings = {
  zh: {
    'metrics.title': '运行指标',
    'metrics.intro': '每个模型部署的请求量、出错与限流、生成速度和首字延迟，来自平台自己的计数。',
    'metrics.window': '时间范围',
    'metrics.win_900': '最近 15 分钟',
    'metrics.win_3600': '最近 1 小时',
    'metrics.win_21600': '最近 6 小时',
    'metrics.win_86400': '最近 24 小时',
    'metrics.deployment': '部署',
    'metrics.all': '全部部署',
    'metrics.step': '每个点代表 {step}',
    'metrics.refresh': '每 {s} 秒刷新',
    'metrics.dashboard': '打开 Ray 仪表盘 ↗',
    'metrics.dashboard_hint': '集群、节点、进程和 GPU 的情况请看 Ray 仪表盘（在新标签页打开）。',
    'metrics.no_dashboard': '平台没有报告 Ray 仪表盘的地址。',
    'metrics.none': '还没有部署任何模型，没有指标可看。',
    'metrics.totals': '时间范围内的汇总',
    'metrics.requests': '请求数',
    'metrics.errors': '错误数',
    'metrics.rejected': '限流拒绝（429）',
    'metrics.tokens': '生成 token 数',
    'metrics.tps': '平均 token/秒',
    'metrics.ttft_p50': '首字延迟 p50',
    'metrics.ttft_p95': '首字延迟 p95（最高）',
    'metrics.latency': '平均总耗时',
    'metrics.chart_requests': '{dep}：请求、错误与限流（每个点的次数）',
    'metrics.chart_tps': '{dep}：生成速度（token/秒）',
    'metrics.chart_ttft': '{dep}：首字延迟与总耗时（毫秒）',
    'metrics.s_requests': '请求',
    'metrics.s_errors': '错误',
    'metrics.s_rejected': '429 限流',
    'metrics.s_tps': 'token/秒',
    'metrics.s_p50': '首字 p50',
    'metrics.s_p95': '首字 p95',
    'metrics.s_latency': '平均总耗时',
    'metrics.explain': '请求数不含被拒绝的请求（格式错误或 429 限流）；首字延迟是从收到请求到生成第一个字的时间；p50 表示一半请求快于该值，p95 表示 95% 的请求快于该值。',
    'metrics.explain_totals': 'p50 一栏是各时间点 p50 按请求数加权的平均；p95 一栏取时间范围内最高的一个点。',
    'metrics.sec': '{n} 秒',
    'metrics.min': '{n} 分钟',
  },
  en: {
    'metrics.title': 'Metrics',
    'metrics.intro': 'Requests, errors and rate limiting, generation speed and time to first token for each model deployment, from the platform\'s own counts.',
    'metrics.window': 'Window',
    'metrics.win_900': 'Last 15 minutes',
    'metrics.win_3600': 'Last hour',
    'metrics.win_21600': 'Last 6 hours',
    'metrics.win_86400': 'Last 24 hours',
    'metrics.deployment': 'Deployment',
    'metrics.all': 'All deployments',
    'metrics.step': 'One point per {step}',
    'metrics.refresh': 'refreshes every {s} s',
    'metrics.dashboard': 'Open the Ray dashboard ↗',
    'metrics.dashboard_hint': 'For the cluster, its nodes, processes and GPUs, see the Ray dashboard (opens in a new tab).',
    'metrics.no_dashboard': 'The platform reported no Ray dashboard address.',
    'metrics.none': 'No model is deployed yet, so there are no metrics.',
    'metrics.totals': 'Totals over the window',
    'metrics.requests': 'Requests',
    'metrics.errors': 'Errors',
    'metrics.rejected': 'Rejected (429)',
    'metrics.tokens': 'Output tokens',
    'metrics.tps': 'Mean tokens/s',
    'metrics.ttft_p50': 'TTFT p50',
    'metrics.ttft_p95': 'TTFT p95 (highest)',
    'metrics.latency': 'Mean latency',
    'metrics.chart_requests': '{dep}: requests, errors and 429s (count per point)',
    'metrics.chart_tps': '{dep}: generation speed (tokens/s)',
    'metrics.chart_ttft': '{dep}: time to first token and latency (ms)',
    'metrics.s_requests': 'requests',
    'metrics.s_errors': 'errors',
    'metrics.s_rejected': '429s',
    'metrics.s_tps': 'tokens/s',
    'metrics.s_p50': 'TTFT p50',
    'metrics.s_p95': 'TTFT p95',
    'metrics.s_latency': 'mean latency',
    'metrics.explain': 'Requests exclude refused ones (bad input or a 429 for saturation); time to first token runs from the request to the first generated text; p50: half the requests were faster, p95: 95 % were.',
    'metrics.explain_totals': 'The p50 column is the request-weighted mean of each point\'s p50; the p95 column is the highest point in the window.',
    'metrics.sec': '{n} s',
    'metrics.min': '{n} min',
  },
};

/** window → [step_s, poll ms]: about 60 to 90 points per chart. */
const WINDOWS = { 900: [10, 10000], 3600: [60, 15000], 21600: [300, 30000], 86400: [1200, 60000] };

const sum = (xs) => xs.reduce((s, x) => s + (x || 0), 0);

function totals(s, step) {
  const req = sum(s.requests);
  const answered = s.requests.map((r, i) => r - (s.errors[i] || 0));
  let w = 0;
  let p50 = 0;
  let lat = 0;
  let latW = 0;
  s.ttft_p50_ms.forEach((v, i) => {
    if (v !== null && v !== undefined && answered[i] > 0) {
      p50 += v * answered[i];
      w += answered[i];
    }
  });
  s.latency_mean_ms.forEach((v, i) => {
    if (v !== null && v !== undefined && answered[i] > 0) {
      lat += v * answered[i];
      latW += answered[i];
    }
  });
  const p95s = s.ttft_p95_ms.filter((v) => v !== null && v !== undefined);
  const tokens = sum(s.output_tokens);
  return {
    requests: req,
    errors: sum(s.errors),
    rejected: sum(s.rejected_429),
    tokens,
    tps: s.t.length ? tokens / (s.t.length * step) : null,
    p50: w ? p50 / w : null,
    p95: p95s.length ? Math.max(...p95s) : null,
    latency: latW ? lat / latW : null,
  };
}

function stepText(step) {
  return step < 60 ? t('metrics.sec', { n: step }) : t('metrics.min', { n: step / 60 });
}

function DashboardLink() {
  const url = session.whoami && session.whoami.ray_dashboard;
  if (!url) return html`<p class="muted" data-testid="metrics-no-dashboard">${t('metrics.no_dashboard')}</p>`;
  return html`<p><a href=${url} target="_blank" rel="noopener noreferrer" role="button" class="outline"
      data-testid="metrics-ray-dashboard">${t('metrics.dashboard')}</a>
    <small class="muted"> ${t('metrics.dashboard_hint')}</small></p>`;
}

function DeploymentCharts({ dep, s }) {
  return html`<section data-testid=${`metrics-dep-${dep}`}>
    <h3>${dep}</h3>
    <div class="grid-even">
      <${Chart} testid=${`metrics-chart-requests-${dep}`} title=${t('metrics.chart_requests', { dep })} x=${s.t}
        series=${[
          { label: t('metrics.s_requests'), values: s.requests },
          { label: t('metrics.s_errors'), values: s.errors, stroke: '#c92a2a' },
          { label: t('metrics.s_rejected'), values: s.rejected_429, stroke: '#e67700' },
        ]} />
      <${Chart} testid=${`metrics-chart-tps-${dep}`} title=${t('metrics.chart_tps', { dep })} x=${s.t}
        series=${[{ label: t('metrics.s_tps'), values: s.tokens_per_s, stroke: '#2b8a3e' }]} />
      <${Chart} testid=${`metrics-chart-ttft-${dep}`} title=${t('metrics.chart_ttft', { dep })} x=${s.t} yLabel="ms"
        series=${[
          { label: t('metrics.s_p50'), values: s.ttft_p50_ms },
          { label: t('metrics.s_p95'), values: s.ttft_p95_ms, stroke: '#ae3ec9' },
          { label: t('metrics.s_latency'), values: s.latency_mean_ms, stroke: '#868e96' },
        ]} />
    </div>
  </section>`;
}

export default function Page() {
  const [windowS, setWindowS] = useState(900);
  const [dep, setDep] = useState('');
  const known = useRef(new Set());
  const [step, pollMs] = WINDOWS[windowS];
  const state = usePoll(
    () => api.get(`/v1/metrics/series?window_s=${windowS}&step_s=${step}${dep ? `&deployment=${seg(dep)}` : ''}`),
    pollMs,
    [windowS, dep],
  );
  const series = (state.data && state.data.series) || {};
  Object.keys(series).forEach((d) => known.current.add(d));
  const names = Object.keys(series).sort();
  const rows = names.map((d) => ({ dep: d, ...totals(series[d], state.data.step_s || step) }));
  const cell = (key, fmt = fmtNum) => (r) => html`<span data-testid=${`metrics-${key}-${r.dep}`}>${fmt(r[key])}</span>`;
  return html`<h2>${t('metrics.title')}</h2>
    <p class="muted">${t('metrics.intro')}</p>
    <${DashboardLink} />
    <div class="toolbar">
      <label>${t('metrics.window')}
        <select data-testid="metrics-window" value=${windowS} onChange=${(e) => setWindowS(Number(e.target.value))}>
          ${Object.keys(WINDOWS).map((w) => html`<option value=${w}>${t(`metrics.win_${w}`)}</option>`)}
        </select></label>
      <label>${t('metrics.deployment')}
        <select data-testid="metrics-deployment" value=${dep} onChange=${(e) => setDep(e.target.value)}>
          <option value="">${t('metrics.all')}</option>
          ${[...known.current].sort().map((d) => html`<option value=${d}>${d}</option>`)}
        </select></label>
      <small class="muted">${t('metrics.step', { step: stepText(step) })} · ${t('metrics.refresh', { s: pollMs / 1000 })}</small>
    </div>
    <${ErrorBox} error=${state.error} testid="metrics-error" />
    <${Loading} when=${!state.data && state.loading} />
    ${state.data && !names.length && html`<${Empty} text=${t('metrics.none')} />`}
    ${names.length > 0 && html`<h3>${t('metrics.totals')}</h3>
      <${Table} testid="metrics-totals" rows=${rows} rowKey=${(r) => r.dep}
        columns=${[
          { key: 'dep', label: t('metrics.deployment') },
          { key: 'requests', label: t('metrics.requests'), render: cell('requests') },
          { key: 'errors', label: t('metrics.errors'), render: cell('errors') },
          { key: 'rejected', label: t('metrics.rejected'), render: cell('rejected') },
          { key: 'tokens', label: t('metrics.tokens'), render: cell('tokens') },
          { key: 'tps', label: t('metrics.tps'), render: cell('tps', (v) => fmtNum(v, 2)) },
          { key: 'p50', label: t('metrics.ttft_p50'), render: cell('p50', fmtMs) },
          { key: 'p95', label: t('metrics.ttft_p95'), render: cell('p95', fmtMs) },
          { key: 'latency', label: t('metrics.latency'), render: cell('latency', fmtMs) },
        ]} />
      <p class="muted"><small>${t('metrics.explain')} ${t('metrics.explain_totals')}</small></p>
      ${names.map((d) => html`<${DeploymentCharts} key=${d} dep=${d} s=${series[d]} />`)}`}`;
}
