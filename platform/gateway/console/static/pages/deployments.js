// Deployments: the models this platform serves, their replicas, engine settings, LoRA
// adapters with their registry refs, aliases and canary shares with the live per-arm
// request counts; an adapter's lineage back to its fine-tune job and dataset version; and a
// read-only manifest editor (validate / diff; applying stays with the CLI and pipelines).
import { html, usePoll, useAsync, ErrorBox, Loading, Empty, Table, Badge, StatusBadge, Json, Tabs } from '../lib/ui.js';
import { api, seg } from '../lib/api.js';
import { t, fmtTime, fmtNum, fmtMs } from '../lib/i18n.js';
import { useState, useRef } from 'preact/hooks';

export const strings = {
  zh: {
    'deployments.title': '模型部署',
    'deployments.tab_list': '部署列表',
    'deployments.tab_manifest': '清单检查',
    'deployments.intro': '平台上正在运行的模型：状态、副本、适配器和灰度流量。每 3 秒自动刷新。',
    'deployments.name': '名称',
    'deployments.status': '状态',
    'deployments.message': '说明',
    'deployments.source': '模型来源',
    'deployments.replicas': '副本',
    'deployments.adapters': '适配器',
    'deployments.traffic': '灰度流量',
    'deployments.aliases': '别名',
    'deployments.generation': '版本号',
    'deployments.applied_at': '应用时间',
    'deployments.none': '还没有部署任何模型。用 qingliang apply -f <清单> 部署。',
    'deployments.back': '← 全部部署',
    'deployments.window': '统计时段',
    'deployments.win_300': '最近 5 分钟',
    'deployments.win_900': '最近 15 分钟',
    'deployments.win_3600': '最近 1 小时',
    'deployments.replica_state': '副本状态',
    'deployments.pid': '进程号',
    'deployments.node': '节点',
    'deployments.no_replicas': '没有副本在运行',
    'deployments.engine': '推理引擎设置',
    'deployments.setting': '设置项',
    'deployments.value': '取值',
    'deployments.adapter': '适配器',
    'deployments.ref': '登记版本（registry ref）',
    'deployments.share': '流量占比',
    'deployments.lineage': '来源',
    'deployments.show_lineage': '查看来源',
    'deployments.no_adapters': '这个部署没有 LoRA 适配器',
    'deployments.base': '基础模型',
    'deployments.rest': '其余',
    'deployments.no_canary': '没有灰度：全部请求走基础模型或调用方指定的适配器。',
    'deployments.canary': '灰度分流：{text}',
    'deployments.alias': '别名',
    'deployments.alias_versions': '指向的版本与占比',
    'deployments.no_aliases': '没有别名',
    'deployments.arms': '各分支的实时请求',
    'deployments.arms_hint': '{window}内每个分支（适配器或基础模型）处理的请求、出错次数和平均耗时；每 3 秒刷新，灰度进行时数字会随请求增长。',
    'deployments.arm': '分支',
    'deployments.requests': '请求数',
    'deployments.errors': '错误数',
    'deployments.error_rate': '错误率',
    'deployments.latency': '平均耗时',
    'deployments.no_arms': '这个时段内还没有请求。',
    'deployments.updated': '更新于 {time}',
    'deployments.lineage_title': '适配器 {name} 的来源',
    'deployments.registry': '登记记录',
    'deployments.job': '微调任务',
    'deployments.dataset': '数据集',
    'deployments.dataset_version': '{name} · 版本 {version}',
    'deployments.raw': '原始数据',
    'deployments.no_job': '没有记录微调任务（外部导入的适配器）',
    'deployments.datasets': '训练和评测用的数据集版本',
    'deployments.no_datasets': '没有记录数据集',
    'deployments.ds_role': '用途',
    'deployments.role_train': '训练',
    'deployments.role_eval': '评测',
    'deployments.records': '记录数',
    'deployments.editor_title': '检查部署清单',
    'deployments.editor_intro': '粘贴一份或多份 YAML 清单（用 --- 分隔），检查写法是否正确，或对比它与平台上现有对象的差别。',
    'deployments.readonly': '此页面只做检查，不会修改平台。要应用清单，请使用命令行 qingliang apply -f <文件>，或通过流水线发布。',
    'deployments.yaml': 'YAML 清单',
    'deployments.validate': '检查',
    'deployments.diff': '对比差异',
    'deployments.valid': '清单有效，共 {n} 个对象。',
    'deployments.invalid': '发现 {n} 处问题：',
    'deployments.at_line': '第 {line} 行',
    'deployments.document': '第 {n} 份文档',
    'deployments.whole_doc': '（整份文档）',
    'deployments.lines_title': '问题所在的行',
    'deployments.empty_yaml': '请先粘贴 YAML 清单',
    'deployments.no_changes': '与平台现状一致，没有变化。',
    'deployments.changes': '应用后将发生的变化：',
    'deployments.action': '操作',
    'deployments.kind': '类型',
    'deployments.fields': '变化的字段',
    'deployments.act_create': '新建',
    'deployments.act_update': '修改',
    'deployments.act_delete': '删除',
    'deployments.act_unchanged': '不变',
    'deployments.lightweight': '只改适配器、灰度比例或别名，不重启副本',
    'deployments.never_deletes': '应用清单只会新建或修改它写到的对象，不会删除清单里没写的对象。',
  },
  en: {
    'deployments.title': 'Model deployments',
    'deployments.tab_list': 'Deployments',
    'deployments.tab_manifest': 'Check a manifest',
    'deployments.intro': 'The models this platform runs: status, replicas, adapters and canary traffic. Refreshes every 3 seconds.',
    'deployments.name': 'Name',
    'deployments.status': 'Status',
    'deployments.message': 'Message',
    'deployments.source': 'Model source',
    'deployments.replicas': 'Replicas',
    'deployments.adapters': 'Adapters',
    'deployments.traffic': 'Canary traffic',
    'deployments.aliases': 'Aliases',
    'deployments.generation': 'Generation',
    'deployments.applied_at': 'Applied',
    'deployments.none': 'No model is deployed yet. Deploy one with qingliang apply -f <manifest>.',
    'deployments.back': '← All deployments',
    'deployments.window': 'Window',
    'deployments.win_300': 'Last 5 minutes',
    'deployments.win_900': 'Last 15 minutes',
    'deployments.win_3600': 'Last hour',
    'deployments.replica_state': 'Replica state',
    'deployments.pid': 'Process',
    'deployments.node': 'Node',
    'deployments.no_replicas': 'No replica is running',
    'deployments.engine': 'Engine settings',
    'deployments.setting': 'Setting',
    'deployments.value': 'Value',
    'deployments.adapter': 'Adapter',
    'deployments.ref': 'Registry ref',
    'deployments.share': 'Traffic share',
    'deployments.lineage': 'Lineage',
    'deployments.show_lineage': 'Show lineage',
    'deployments.no_adapters': 'This deployment has no LoRA adapter',
    'deployments.base': 'base model',
    'deployments.rest': 'rest',
    'deployments.no_canary': 'No canary: every request goes to the base model or the adapter the caller names.',
    'deployments.canary': 'Canary split: {text}',
    'deployments.alias': 'Alias',
    'deployments.alias_versions': 'Versions and shares',
    'deployments.no_aliases': 'No aliases',
    'deployments.arms': 'Live requests per arm',
    'deployments.arms_hint': 'Requests, errors and mean latency of each arm (an adapter or the base model) over the {window}; refreshed every 3 seconds, so a running canary\'s counts grow as requests arrive.',
    'deployments.arm': 'Arm',
    'deployments.requests': 'Requests',
    'deployments.errors': 'Errors',
    'deployments.error_rate': 'Error rate',
    'deployments.latency': 'Mean latency',
    'deployments.no_arms': 'No requests in this window yet.',
    'deployments.updated': 'Updated {time}',
    'deployments.lineage_title': 'Where adapter {name} comes from',
    'deployments.registry': 'Registry record',
    'deployments.job': 'Fine-tune job',
    'deployments.dataset': 'Dataset',
    'deployments.dataset_version': '{name} · version {version}',
    'deployments.raw': 'Raw data',
    'deployments.no_job': 'No fine-tune job recorded (an imported adapter)',
    'deployments.datasets': 'Dataset versions it was trained and evaluated on',
    'deployments.no_datasets': 'No dataset recorded',
    'deployments.ds_role': 'Used for',
    'deployments.role_train': 'training',
    'deployments.role_eval': 'evaluation',
    'deployments.records': 'Records',
    'deployments.editor_title': 'Check a deployment manifest',
    'deployments.editor_intro': 'Paste one or more YAML manifests (separated by ---) to check them, or to compare them with what the platform runs now.',
    'deployments.readonly': 'This page only checks; it changes nothing. To apply a manifest use the command line, qingliang apply -f <file>, or release it through a pipeline.',
    'deployments.yaml': 'YAML manifest',
    'deployments.validate': 'Validate',
    'deployments.diff': 'Diff',
    'deployments.valid': 'The manifest is valid: {n} object(s).',
    'deployments.invalid': '{n} problem(s) found:',
    'deployments.at_line': 'line {line}',
    'deployments.document': 'document {n}',
    'deployments.whole_doc': '(whole document)',
    'deployments.lines_title': 'The lines with problems',
    'deployments.empty_yaml': 'Paste a YAML manifest first',
    'deployments.no_changes': 'Same as the platform now: nothing would change.',
    'deployments.changes': 'What applying it would change:',
    'deployments.action': 'Action',
    'deployments.kind': 'Kind',
    'deployments.fields': 'Changed fields',
    'deployments.act_create': 'create',
    'deployments.act_update': 'update',
    'deployments.act_delete': 'delete',
    'deployments.act_unchanged': 'unchanged',
    'deployments.lightweight': 'adapters, canary shares or aliases only: no replica restarts',
    'deployments.never_deletes': 'Applying a manifest only creates or changes the objects it names; it never deletes one it does not name.',
  },
};

const CSS = `
.dep-kv { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0 0 1rem; }
.dep-kv dt { color: var(--pico-muted-color); } .dep-kv dd { margin: 0; word-break: break-word; }
.dep-section { margin-bottom: 2rem; }
.dep-page nav.tabs { justify-content: flex-start; }
.dep-editor textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85rem; min-height: 16rem; }
.dep-errors li { margin-bottom: .35rem; }
.dep-errors code { margin-right: .5rem; }
ol.dep-lines { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .82rem; max-height: 28rem;
  overflow: auto; padding-left: 3.5rem; border: 1px solid var(--pico-muted-border-color); border-radius: .25rem; }
ol.dep-lines li { white-space: pre-wrap; word-break: break-word; padding: 0 .4rem; list-style: decimal; }
ol.dep-lines li::marker { color: var(--pico-muted-color); }
ol.dep-lines li.err { background: #fff0f0; border-left: 3px solid var(--ql-bad); }
ol.dep-lines .line-msg { display: block; color: var(--ql-bad); font-family: var(--pico-font-family-sans-serif); }
`;

const WINDOWS = [300, 900, 3600];
const POLL_MS = 3000;

const armLabel = (arm) => (arm === '' || arm === 'base' || arm === null ? t('deployments.base') : arm);
const armId = (arm) => (arm === '' || arm === null ? 'base' : arm);
const pct = (x) => (x === null || x === undefined ? '—' : `${fmtNum(x * 100, 1)}%`);

/** `{faq: 0.1}` → `faq 10%, base model 90%` (no canary: ''). */
function trafficText(traffic) {
  const entries = Object.entries(traffic || {});
  if (!entries.length) return '';
  const rest = Math.max(0, 1 - entries.reduce((s, [, v]) => s + Number(v || 0), 0));
  const parts = entries.sort().map(([n, s]) => `${armLabel(n)} ${pct(s)}`);
  if (rest > 1e-9) parts.push(`${t('deployments.base')} ${pct(rest)}`);
  return parts.join(', ');
}

function replicasText(replicas) {
  if (!replicas || !replicas.length) return '0';
  const by = {};
  for (const r of replicas) by[r.state] = (by[r.state] || 0) + 1;
  return Object.entries(by).map(([s, n]) => `${n} ${s}`).join(', ');
}

function Kv({ value, testid }) {
  const entries = Object.entries(value || {}).filter(([, v]) => v !== null && v !== undefined && v !== '');
  if (!entries.length) return html`<${Empty} />`;
  return html`<dl class="dep-kv" data-testid=${testid}>${entries.map(([k, v]) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return html`<dt>${k}</dt><dd><details><summary>${Object.keys(v).length}</summary><${Kv} value=${v} /></details></dd>`;
    }
    return html`<dt>${k}</dt><dd>${Array.isArray(v) ? v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(', ') : String(v)}</dd>`;
  })}</dl>`;
}

function WindowPick({ value, onChange }) {
  return html`<label>${t('deployments.window')}
    <select data-testid="deployments-window" value=${value} onChange=${(e) => onChange(Number(e.target.value))}>
      ${WINDOWS.map((w) => html`<option value=${w}>${t(`deployments.win_${w}`)}</option>`)}
    </select></label>`;
}

function List({ navigate }) {
  const state = usePoll(() => api.get('/v1/deployments'), POLL_MS, []);
  const rows = (state.data && state.data.data) || [];
  if (!state.data && state.loading) return html`<${Loading} />`;
  return html`<p class="muted">${t('deployments.intro')}</p>
    <${ErrorBox} error=${state.error} testid="deployments-error" />
    ${state.data && html`<${Table} testid="deployments-table" empty=${t('deployments.none')} rows=${rows}
      rowKey=${(r) => r.name} onRow=${(r) => navigate('deployments', r.name)}
      columns=${[
        { key: 'name', label: t('deployments.name'), render: (r) => html`<a href=${`#/deployments/${seg(r.name)}`} data-testid=${`deployments-link-${r.name}`}>${r.name}</a>` },
        { key: 'status', label: t('deployments.status'), render: (r) => html`<${StatusBadge} status=${r.status} testid=${`deployments-status-${r.name}`} />` },
        { key: 'replicas', label: t('deployments.replicas'), render: (r) => html`<span data-testid=${`deployments-replicas-${r.name}`}>${replicasText(r.replicas)}</span>` },
        { key: 'adapters', label: t('deployments.adapters'), render: (r) => (r.adapters || []).map((a) => a.name).join(', ') || '—' },
        { key: 'traffic', label: t('deployments.traffic'), render: (r) => trafficText(r.traffic) || '—' },
        { key: 'aliases', label: t('deployments.aliases'), render: (r) => Object.keys(r.aliases || {}).sort().join(', ') || '—' },
        { key: 'generation', label: t('deployments.generation') },
        { key: 'message', label: t('deployments.message'), render: (r) => r.message || '—' },
      ]} />`}`;
}

function Lineage({ deployment, adapter, onClose }) {
  const state = useAsync(
    () => api.get(`/v1/adapters/${seg(adapter)}/lineage?deployment=${seg(deployment)}`),
    [deployment, adapter],
  );
  const d = state.data || {};
  const datasets = d.datasets || [];
  return html`<article data-testid="deployments-lineage">
    <header><strong>${t('deployments.lineage_title', { name: adapter })}</strong>
      <button type="button" class="secondary outline" style="float:right;width:auto;padding:.1rem .6rem"
        data-testid="deployments-lineage-close" onClick=${onClose}>${t('common.close')}</button></header>
    <${Loading} when=${state.loading && !state.data} />
    <${ErrorBox} error=${state.error} testid="deployments-lineage-error" />
    ${state.data && d.resolved_via && html`<p class="muted" data-testid="deployments-lineage-via">${d.resolved_via}</p>`}
    ${state.data && html`<div class="grid-even">
      <section><h4>${t('deployments.registry')}</h4><${Kv} value=${d.adapter} testid="deployments-lineage-record" /></section>
      <section><h4>${t('deployments.job')}</h4>
        ${d.job ? html`<${Kv} value=${d.job} testid="deployments-lineage-job" />` : html`<p class="muted" data-testid="deployments-lineage-job">${t('deployments.no_job')}</p>`}</section>
    </div>
    <h4>${t('deployments.datasets')}</h4>
    <${Table} testid="deployments-lineage-datasets" empty=${t('deployments.no_datasets')} rows=${datasets}
      columns=${[
        { key: 'role', label: t('deployments.ds_role'), render: (r) => t(`deployments.role_${r.role}`) },
        { key: 'dataset', label: t('deployments.dataset'), render: (r) => html`<strong data-testid="deployments-lineage-dataset">${t('deployments.dataset_version', { name: r.dataset, version: r.version })}</strong>` },
        { key: 'ref', label: t('deployments.ref'), render: (r) => html`<code>${r.ref}</code>` },
        { key: 'status', label: t('deployments.status'), render: (r) => html`<${StatusBadge} status=${r.status} />` },
        { key: 'record_counts', label: t('deployments.records') },
      ]} />
    <${Json} value=${state.data} label=${t('deployments.raw')} />`}
  </article>`;
}

function Arms({ dep, windowS }) {
  const arms = Object.entries(dep.arms || {}).map(([arm, v]) => ({ arm, ...v }));
  const share = (arm) => {
    const tr = dep.traffic || {};
    if (armId(arm) === 'base') {
      if (!Object.keys(tr).length) return null;
      return Math.max(0, 1 - Object.values(tr).reduce((s, v) => s + Number(v || 0), 0));
    }
    // A bare-deployment canary share, or the adapter's share of its alias.
    const adapter = (dep.adapters || []).find((a) => a.name === arm);
    return (adapter && adapter.share) ?? tr[arm] ?? null;
  };
  return html`<section class="dep-section">
    <h3>${t('deployments.arms')}</h3>
    <p class="muted">${t('deployments.arms_hint', { window: t(`deployments.win_${windowS}`) })}</p>
    <${Table} testid="deployments-arms" empty=${t('deployments.no_arms')} rows=${arms} rowKey=${(r) => armId(r.arm)}
      columns=${[
        { key: 'arm', label: t('deployments.arm'), render: (r) => html`<span data-testid=${`deployments-arm-${armId(r.arm)}`}>${armLabel(r.arm)}</span>` },
        { key: 'share', label: t('deployments.share'), render: (r) => pct(share(r.arm)) },
        { key: 'requests', label: t('deployments.requests'), render: (r) => html`<span data-testid=${`deployments-arm-requests-${armId(r.arm)}`}>${fmtNum(r.requests)}</span>` },
        { key: 'errors', label: t('deployments.errors'), render: (r) => html`<span data-testid=${`deployments-arm-errors-${armId(r.arm)}`}>${fmtNum(r.errors)}</span>` },
        { key: 'error_rate', label: t('deployments.error_rate'), render: (r) => pct(r.error_rate) },
        { key: 'mean_latency_ms', label: t('deployments.latency'), render: (r) => fmtMs(r.mean_latency_ms) },
      ]} />
  </section>`;
}

function Aliases({ aliases }) {
  const rows = Object.entries(aliases || {}).sort().map(([alias, versions]) => ({ alias, versions }));
  return html`<section class="dep-section"><h3>${t('deployments.aliases')}</h3>
    <${Table} testid="deployments-aliases" empty=${t('deployments.no_aliases')} rows=${rows} rowKey=${(r) => r.alias}
      columns=${[
        { key: 'alias', label: t('deployments.alias') },
        { key: 'versions', label: t('deployments.alias_versions'), render: (r) => trafficText(r.versions) || t('deployments.base') },
      ]} /></section>`;
}

function Detail({ name, navigate }) {
  const [windowS, setWindowS] = useState(300);
  const [lineage, setLineage] = useState(null);
  const state = usePoll(
    async () => ({ ...(await api.get(`/v1/deployments/${seg(name)}?window_s=${windowS}`)), _at: Date.now() / 1000 }),
    POLL_MS,
    [name, windowS],
  );
  const dep = state.data;
  const traffic = dep && trafficText(dep.traffic);
  return html`<p><a href="#/deployments" data-testid="deployments-back">${t('deployments.back')}</a></p>
    <div class="toolbar"><h2 style="margin:0">${name}</h2>
      ${dep && html`<${StatusBadge} status=${dep.status} testid="deployments-status" />`}
      <${WindowPick} value=${windowS} onChange=${setWindowS} />
      ${dep && html`<small class="muted" data-testid="deployments-updated">${t('deployments.updated', { time: fmtTime(dep._at) })}</small>`}</div>
    <${ErrorBox} error=${state.error} testid="deployments-error" />
    <${Loading} when=${!dep && state.loading} />
    ${dep && html`
      ${dep.message && html`<p class="notice" data-testid="deployments-message">${dep.message}</p>`}
      <${Kv} value=${{ [t('deployments.source')]: dep.source, [t('deployments.generation')]: dep.generation, [t('deployments.applied_at')]: dep.applied_at && fmtTime(dep.applied_at) }} />
      <div class="grid-even">
        <section class="dep-section"><h3>${t('deployments.replicas')}</h3>
          <${Table} testid="deployments-replicas" empty=${t('deployments.no_replicas')} rows=${dep.replicas || []}
            columns=${[
              { key: 'state', label: t('deployments.replica_state'), render: (r) => html`<${StatusBadge} status=${r.state} testid="deployments-replica-state" />` },
              { key: 'pid', label: t('deployments.pid') },
              { key: 'node_id', label: t('deployments.node'), render: (r) => html`<span title=${r.node_id}>${(r.node_id || '—').slice(0, 12)}</span>` },
            ]} /></section>
        <section class="dep-section"><h3>${t('deployments.engine')}</h3><${Kv} value=${dep.engine} testid="deployments-engine" /></section>
      </div>
      <section class="dep-section"><h3>${t('deployments.adapters')}</h3>
        <p data-testid="deployments-canary">${traffic ? t('deployments.canary', { text: traffic }) : t('deployments.no_canary')}</p>
        <${Table} testid="deployments-adapters" empty=${t('deployments.no_adapters')} rows=${dep.adapters || []} rowKey=${(r) => r.name}
          columns=${[
            { key: 'name', label: t('deployments.adapter') },
            { key: 'ref', label: t('deployments.ref'), render: (r) => html`<code>${r.ref || '—'}</code>` },
            { key: 'share', label: t('deployments.share'), render: (r) => pct(r.share) },
            { key: 'lineage', label: t('deployments.lineage'), render: (r) => html`<button type="button" class="secondary outline"
                style="width:auto;padding:.1rem .6rem;margin:0" data-testid=${`deployments-lineage-${r.name}`}
                onClick=${() => setLineage(r.name)}>${t('deployments.show_lineage')}</button>` },
          ]} />
        ${lineage && html`<${Lineage} deployment=${name} adapter=${lineage} onClose=${() => setLineage(null)} />`}
      </section>
      <${Arms} dep=${dep} windowS=${windowS} />
      <${Aliases} aliases=${dep.aliases} />`}`;
}

const ACTION_TONE = { create: 'ok', update: 'warn', delete: 'bad' };
const ACTIONS = ['create', 'update', 'delete', 'unchanged'];

function changeFields(c) {
  const f = c.fields || c.changed || [];
  if (Array.isArray(f)) return f.map((x) => (typeof x === 'string' ? x : JSON.stringify(x)));
  return Object.keys(f);
}

function DiffTable({ changes }) {
  const real = changes.filter((c) => c.action !== 'unchanged');
  return html`<p data-testid=${real.length ? 'deployments-changes' : 'deployments-no-changes'}>${real.length ? t('deployments.changes') : t('deployments.no_changes')}</p>
    ${changes.length > 0 && html`<div class="table-wrap"><table class="striped" data-testid="deployments-diff-table">
    <thead><tr><th>${t('deployments.action')}</th><th>${t('deployments.kind')}</th><th>${t('deployments.name')}</th><th>${t('deployments.fields')}</th></tr></thead>
    <tbody>${changes.map((c) => html`<tr data-testid="deployments-diff-row" data-action=${c.action}>
      <td><${Badge} tone=${ACTION_TONE[c.action] || 'muted'} text=${ACTIONS.includes(c.action) ? t(`deployments.act_${c.action}`) : c.action} />
        ${c.lightweight && html`<br /><small class="muted">${t('deployments.lightweight')}</small>`}</td>
      <td>${c.kind || '—'}</td><td><strong>${c.name || '—'}</strong></td>
      <td>${changeFields(c).length ? html`<ul style="margin:0">${changeFields(c).map((f) => html`<li><code>${f}</code></li>`)}</ul>` : '—'}</td>
    </tr>`)}</tbody></table></div>`}
    <p class="muted"><small>${t('deployments.never_deletes')}</small></p>`;
}

function errorWhere(e, many) {
  const doc = many && e.document !== null && e.document !== undefined ? `${t('deployments.document', { n: Number(e.document) + 1 })} · ` : '';
  return `${doc}${e.path || t('deployments.whole_doc')}`;
}

/** The submitted YAML, numbered, with each line that has an error highlighted and its messages beside it. */
function AnnotatedLines({ text, errors }) {
  const byLine = {};
  for (const e of errors) if (e.line) (byLine[e.line] = byLine[e.line] || []).push(e);
  if (!Object.keys(byLine).length) return null;
  return html`<h4>${t('deployments.lines_title')}</h4>
    <ol class="dep-lines" data-testid="deployments-manifest-lines">${text.split('\n').map((line, i) => {
      const errs = byLine[i + 1];
      return html`<li class=${errs ? 'err' : ''} data-testid=${errs ? `deployments-line-${i + 1}` : undefined}>${line || ' '}${errs && errs.map(
        (e) => html`<span class="line-msg" data-testid="deployments-line-message">← <code>${e.path || t('deployments.whole_doc')}</code> ${e.message}</span>`,
      )}</li>`;
    })}</ol>`;
}

function ManifestEditor() {
  const [text, setText] = useState('');
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(null);
  const area = useRef(null);
  const run = async (mode) => {
    if (!text.trim()) {
      setResult(null);
      setError(new Error(t('deployments.empty_yaml')));
      return;
    }
    setBusy(mode);
    setError(null);
    try {
      const data = await api.post(`/v1/manifests/${mode}`, { yaml: text });
      setResult({ mode, data, text });
    } catch (e) {
      setResult(null);
      setError(e);
    } finally {
      setBusy(null);
    }
  };
  const jump = (line) => {
    const el = area.current;
    if (!el || !line) return;
    const lines = el.value.split('\n');
    const start = lines.slice(0, line - 1).reduce((s, l) => s + l.length + 1, 0);
    el.focus();
    el.setSelectionRange(start, start + (lines[line - 1] || '').length);
  };
  const data = result && result.data;
  const errors = (data && data.errors) || [];
  const many = errors.some((e) => e.document) || ((data && data.objects) || []).length > 1;
  return html`<section class="dep-editor" data-testid="deployments-editor">
    <h3>${t('deployments.editor_title')}</h3>
    <p class="muted">${t('deployments.editor_intro')}</p>
    <p class="notice" data-testid="deployments-readonly">${t('deployments.readonly')}</p>
    <label>${t('deployments.yaml')}
      <textarea ref=${area} data-testid="deployments-manifest-input" spellcheck="false" rows="16"
        aria-invalid=${errors.length ? 'true' : undefined}
        value=${text} onInput=${(e) => { setText(e.target.value); setResult(null); }}></textarea></label>
    <div class="toolbar">
      <button type="button" data-testid="deployments-validate" aria-busy=${busy === 'validate'} disabled=${!!busy}
        onClick=${() => run('validate')}>${t('deployments.validate')}</button>
      <button type="button" class="secondary" data-testid="deployments-diff" aria-busy=${busy === 'diff'} disabled=${!!busy}
        onClick=${() => run('diff')}>${t('deployments.diff')}</button>
    </div>
    <${ErrorBox} error=${error} testid="deployments-manifest-failed" />
    ${data && data.ok && html`<p class="badge-line" data-testid="deployments-manifest-ok"><${Badge} tone="ok" text="✓" />
      ${' '}${t('deployments.valid', { n: (data.objects || []).length })}
      ${(data.objects || []).length > 0 && html` <span class="muted">${(data.objects || []).map((o) => (typeof o === 'string' ? o : `${o.kind}/${o.name}`)).join(', ')}</span>`}</p>`}
    ${errors.length > 0 && html`<div data-testid="deployments-manifest-errors">
      <p class="error">${t('deployments.invalid', { n: errors.length })}</p>
      <ul class="dep-errors">${errors.map((e) => html`<li data-testid="deployments-manifest-error" data-path=${e.path || ''}>
        <code data-testid="deployments-error-path">${errorWhere(e, many)}</code>
        <span class="field-error" data-testid="deployments-error-message">${e.message}</span>
        ${e.line && html` <a href="#" data-testid="deployments-error-line" onClick=${(ev) => { ev.preventDefault(); jump(e.line); }}>(${t('deployments.at_line', { line: e.line })})</a>`}
      </li>`)}</ul>
      <${AnnotatedLines} text=${result.text} errors=${errors} /></div>`}
    ${data && result.mode === 'diff' && !errors.length && html`<${DiffTable} changes=${data.changes || []} />`}
  </section>`;
}

export default function Page({ args, navigate }) {
  const [tab, setTab] = useState('deployments-list');
  const name = args[0];
  return html`<style>${CSS}</style><div class="dep-page">
    <h2>${t('deployments.title')}</h2>
    ${name ? html`<${Detail} name=${name} navigate=${navigate} />` : html`
      <${Tabs} testid="deployments-tabs" active=${tab} onChange=${setTab} tabs=${[
        { id: 'deployments-list', label: t('deployments.tab_list') },
        { id: 'deployments-manifest', label: t('deployments.tab_manifest') },
      ]} />
      ${tab === 'deployments-manifest' ? html`<${ManifestEditor} />` : html`<${List} navigate=${navigate} />`}`}</div>`;
}
