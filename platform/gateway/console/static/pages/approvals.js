// Approvals inbox: agent runs waiting at an approval node (GET /v1/agents/approvals) and
// pipeline runs waiting at an approval or promote step (GET /v1/pipelines, status waiting).
// Each item shows its evidence — the request, the filled forms, the draft answer, the cited
// passages, the node or step waiting; for a pipeline the evaluation and canary figures — and
// is decided here: approve, edit the answer / form values then approve, or reject with a
// reason. The server decides who may (self-approval, already decided): its refusal is shown
// as it gave it. The inbox is read again every 5 s.
import { useEffect, useState } from 'preact/hooks';
import { api, can, seg, session } from '../lib/api.js';
import { fmtMs, fmtNum, fmtTime, t } from '../lib/i18n.js';
import { Badge, Empty, ErrorBox, html, Json, Loading, StatusBadge, useAsync, usePoll } from '../lib/ui.js';

export const strings = {
  zh: {
    'approvals.title': '待审批事项',
    'approvals.intro': '需要人工确认的智能体运行和流水线步骤。请核对证据后批准、修改后批准或驳回。',
    'approvals.refreshed': '每 5 秒自动刷新 · 上次 {time}',
    'approvals.empty': '目前没有等待审批的事项。',
    'approvals.kind': '类型',
    'approvals.kind.agent': '智能体运行',
    'approvals.kind.pipeline': '流水线',
    'approvals.what': '流程 / 流水线',
    'approvals.where': '等待的节点 / 步骤',
    'approvals.request': '申请内容',
    'approvals.by': '发起人',
    'approvals.since': '等待开始于',
    'approvals.tenant': '租户',
    'approvals.open': '打开',
    'approvals.pipelines_hidden': '当前密钥绑定了租户,看不到流水线审批(流水线影响所有租户)。',
    'approvals.pipelines_failed': '读取流水线审批失败:',
    'approvals.agents_failed': '读取智能体审批失败:',
    'approvals.back': '← 返回列表',
    'approvals.item_agent': '智能体运行 {id}',
    'approvals.item_pipeline': '流水线运行 {id}',
    'approvals.evidence': '审批依据',
    'approvals.graph': '智能体流程',
    'approvals.node': '等待的节点',
    'approvals.prompt': '审批问题',
    'approvals.the_request': '市民/用户的请求',
    'approvals.attachments': '附件:{names}',
    'approvals.route': '路由:{node} → {arm}(倾向概率 {p})',
    'approvals.forms': '已填写的表单',
    'approvals.form': '表单 {name}',
    'approvals.field': '字段',
    'approvals.value': '值',
    'approvals.no_forms': '这次运行没有填写表单。',
    'approvals.answer': '草拟的答复',
    'approvals.answer_hint': '可以直接修改答复和表单内容,批准时按修改后的内容执行。',
    'approvals.no_answer': '(没有草拟答复)',
    'approvals.citations': '引用的资料({n} 条)',
    'approvals.no_citations': '没有引用资料。',
    'approvals.source': '来源:{source}',
    'approvals.tools': '工具调用',
    'approvals.tool_line': '{tool}({node})',
    'approvals.tool_error': '出错:{error}',
    'approvals.decide': '审批决定',
    'approvals.comment': '意见 / 驳回理由',
    'approvals.comment_hint': '批准时可选填;驳回时必须填写理由。',
    'approvals.reason_required': '驳回必须填写理由。',
    'approvals.approve': '批准',
    'approvals.approve_edited': '按修改后的内容批准',
    'approvals.reject': '驳回',
    'approvals.edited': '已修改:{what}',
    'approvals.edited_answer': '答复',
    'approvals.edited_forms': '表单',
    'approvals.reset': '撤销修改',
    'approvals.deciding': '正在提交,流程将继续运行直到结束…',
    'approvals.outcome': '处理结果',
    'approvals.outcome_status': '运行状态',
    'approvals.outcome_answer': '最终答复',
    'approvals.outcome_reason': '说明',
    'approvals.outcome_pipeline': '已提交决定,流水线在后台继续运行。',
    'approvals.open_run': '查看运行记录',
    'approvals.not_waiting': '这一事项已不在待审批列表中(可能已由他人处理)。如果再次提交,服务器会拒绝。',
    'approvals.decided': '这一事项已经处理,当前状态:{status}。',
    'approvals.self_hint': '由 {actor} 发起。发起人不能审批自己的申请,除非流程允许。',
    'approvals.pipeline': '流水线',
    'approvals.step': '等待的步骤',
    'approvals.step_kind': '审批类型',
    'approvals.step_kind.approval': '上线前审批',
    'approvals.step_kind.promote': '灰度转正审批',
    'approvals.message': '审批问题',
    'approvals.adapter': '适配器',
    'approvals.metrics': '评估结果(基础模型 vs 适配器)',
    'approvals.metric': '指标',
    'approvals.base': '基础模型',
    'approvals.adapter_col': '适配器',
    'approvals.delta': '差值',
    'approvals.no_metrics': '这条流水线没有评估步骤的结果。',
    'approvals.gate_failures': '未通过的门槛:{list}',
    'approvals.canary': '灰度流量统计',
    'approvals.canary_share': '部署 {deployment} · 灰度份额 {share}',
    'approvals.arm': '分组',
    'approvals.requests': '请求数',
    'approvals.errors': '服务器错误',
    'approvals.error_rate': '错误率',
    'approvals.latency': '平均延迟',
    'approvals.canary_arm': '灰度(新适配器)',
    'approvals.baseline_arm': '基线',
    'approvals.figures_at': '统计截至 {time}',
    'approvals.no_figures': '暂时读不到灰度统计。',
    'approvals.outputs': '各步骤的输出',
  },
  en: {
    'approvals.title': 'Approvals',
    'approvals.intro': 'Agent runs and pipeline steps waiting for a person. Check the evidence, then approve, edit and approve, or reject.',
    'approvals.refreshed': 'Refreshed every 5 s · last at {time}',
    'approvals.empty': 'Nothing is waiting for approval.',
    'approvals.kind': 'Kind',
    'approvals.kind.agent': 'Agent run',
    'approvals.kind.pipeline': 'Pipeline',
    'approvals.what': 'Graph / pipeline',
    'approvals.where': 'Waiting at',
    'approvals.request': 'Request',
    'approvals.by': 'Started by',
    'approvals.since': 'Waiting since',
    'approvals.tenant': 'Tenant',
    'approvals.open': 'Open',
    'approvals.pipelines_hidden': 'This key is bound to a tenant: pipeline approvals (which affect every tenant) are not shown.',
    'approvals.pipelines_failed': 'Pipeline approvals could not be read: ',
    'approvals.agents_failed': 'Agent approvals could not be read: ',
    'approvals.back': '← Back to the list',
    'approvals.item_agent': 'Agent run {id}',
    'approvals.item_pipeline': 'Pipeline run {id}',
    'approvals.evidence': 'Evidence',
    'approvals.graph': 'Agent graph',
    'approvals.node': 'Waiting node',
    'approvals.prompt': 'Question',
    'approvals.the_request': 'The request',
    'approvals.attachments': 'Attachments: {names}',
    'approvals.route': 'Route: {node} → {arm} (propensity {p})',
    'approvals.forms': 'Filled forms',
    'approvals.form': 'Form {name}',
    'approvals.field': 'Field',
    'approvals.value': 'Value',
    'approvals.no_forms': 'No form was filled in this run.',
    'approvals.answer': 'Draft answer',
    'approvals.answer_hint': 'You may edit the answer and the form values; approving then uses your version.',
    'approvals.no_answer': '(no draft answer)',
    'approvals.citations': 'Cited sources ({n})',
    'approvals.no_citations': 'No sources were cited.',
    'approvals.source': 'Source: {source}',
    'approvals.tools': 'Tool calls',
    'approvals.tool_line': '{tool} ({node})',
    'approvals.tool_error': 'Error: {error}',
    'approvals.decide': 'Decision',
    'approvals.comment': 'Comment / reason for rejecting',
    'approvals.comment_hint': 'Optional when approving; required when rejecting.',
    'approvals.reason_required': 'A rejection needs a reason.',
    'approvals.approve': 'Approve',
    'approvals.approve_edited': 'Approve with my edits',
    'approvals.reject': 'Reject',
    'approvals.edited': 'Edited: {what}',
    'approvals.edited_answer': 'answer',
    'approvals.edited_forms': 'forms',
    'approvals.reset': 'Undo edits',
    'approvals.deciding': 'Sending; the run continues until it ends…',
    'approvals.outcome': 'Outcome',
    'approvals.outcome_status': 'Run status',
    'approvals.outcome_answer': 'Final answer',
    'approvals.outcome_reason': 'Reason',
    'approvals.outcome_pipeline': 'Decision sent; the pipeline continues in the background.',
    'approvals.open_run': 'Open the run history',
    'approvals.not_waiting': 'This item is no longer in the inbox (someone may have decided it). Deciding again will be refused by the server if so.',
    'approvals.decided': 'This item was decided already; its status is {status}.',
    'approvals.self_hint': 'Started by {actor}. The key that started a run may not approve it unless the graph allows it.',
    'approvals.pipeline': 'Pipeline',
    'approvals.step': 'Waiting step',
    'approvals.step_kind': 'Approval kind',
    'approvals.step_kind.approval': 'Approval before release',
    'approvals.step_kind.promote': 'Promote the canary',
    'approvals.message': 'Question',
    'approvals.adapter': 'Adapter',
    'approvals.metrics': 'Evaluation (base model vs adapter)',
    'approvals.metric': 'Metric',
    'approvals.base': 'Base model',
    'approvals.adapter_col': 'Adapter',
    'approvals.delta': 'Difference',
    'approvals.no_metrics': 'This pipeline has no evaluation results.',
    'approvals.gate_failures': 'Thresholds missed: {list}',
    'approvals.canary': 'Canary traffic',
    'approvals.canary_share': 'Deployment {deployment} · canary share {share}',
    'approvals.arm': 'Arm',
    'approvals.requests': 'Requests',
    'approvals.errors': 'Server errors',
    'approvals.error_rate': 'Error rate',
    'approvals.latency': 'Mean latency',
    'approvals.canary_arm': 'Canary (new adapter)',
    'approvals.baseline_arm': 'Baseline',
    'approvals.figures_at': 'Figures as of {time}',
    'approvals.no_figures': 'The canary figures cannot be read yet.',
    'approvals.outputs': 'Outputs of the steps',
  },
};

/** May this key see pipeline approvals? (pipeline routes are never bound to a tenant) */
/** A key with a `tenant:` scope is refused the platform-wide pipeline routes (admin is not). */
const tenantBound = () => {
  const scopes = (session.whoami && session.whoami.scopes) || [];
  return !scopes.includes('admin') && scopes.some((s) => s.startsWith('tenant:'));
};
const seesPipelines = () => can('approve') && !tenantBound();

async function loadInbox() {
  const agents = api.get('/v1/agents/approvals');
  const pipelines = seesPipelines() ? api.get('/v1/pipelines?limit=200') : Promise.resolve(null);
  const [a, p] = await Promise.allSettled([agents, pipelines]);
  const items = [];
  if (a.status === 'fulfilled') {
    for (const r of a.value.data || []) {
      items.push({
        kind: 'agent', id: r.run_id, what: r.graph, where: r.node, text: r.input,
        by: r.actor, since: r.waiting_since, tenant: r.tenant,
      });
    }
  }
  if (p.status === 'fulfilled' && p.value) {
    for (const r of p.value.data || []) {
      if (r.status !== 'waiting') continue;
      const w = r.waiting || {};
      items.push({
        kind: 'pipeline', id: r.id, what: r.pipeline, where: w.step || r.step, text: w.message,
        by: r.actor, since: r.updated, tenant: null,
      });
    }
  }
  items.sort((x, y) => (y.since || 0) - (x.since || 0));
  return {
    items,
    agentsError: a.status === 'rejected' ? a.reason : null,
    pipelinesError: p.status === 'rejected' ? p.reason : null,
    at: Date.now() / 1000,
  };
}

export default function Page({ args, navigate }) {
  const inbox = usePoll(loadInbox, 5000);
  const [kind, id] = args;
  const data = inbox.data;
  const open = kind && id ? { kind, id } : null;
  const listed = data ? data.items.some((i) => i.kind === kind && i.id === id) : true;
  return html`<section data-testid="approvals">
    <h2>${t('approvals.title')}</h2>
    <p class="muted">${t('approvals.intro')}</p>
    ${open
      ? html`<p><a href="#/approvals" data-testid="approvals-back">${t('approvals.back')}</a></p>
        ${open.kind === 'pipeline'
          ? html`<${PipelineItem} key=${id} id=${id} listed=${listed} onDecided=${inbox.reload} navigate=${navigate} />`
          : html`<${AgentItem} key=${id} id=${id} listed=${listed} onDecided=${inbox.reload} navigate=${navigate} />`}`
      : html`<${Inbox} inbox=${inbox} navigate=${navigate} />`}
  </section>`;
}

function Inbox({ inbox, navigate }) {
  const data = inbox.data;
  if (!data) return inbox.error ? html`<${ErrorBox} error=${inbox.error} />` : html`<${Loading} />`;
  return html`<div>
    <p class="muted" data-testid="approvals-refreshed">${t('approvals.refreshed', { time: fmtTime(data.at) })}</p>
    ${data.agentsError && html`<p class="error" role="alert" data-testid="approvals-agents-error">${t('approvals.agents_failed')}${data.agentsError.message}</p>`}
    ${data.pipelinesError && html`<p class="error" role="alert" data-testid="approvals-pipelines-error">${t('approvals.pipelines_failed')}${data.pipelinesError.message}</p>`}
    ${!seesPipelines() && can('approve') && html`<p class="muted" data-testid="approvals-pipelines-hidden">${t('approvals.pipelines_hidden')}</p>`}
    ${data.items.length === 0
      ? html`<div data-testid="approvals-empty"><${Empty} text=${t('approvals.empty')} /></div>`
      : html`<div class="table-wrap"><table class="striped" data-testid="approvals-list">
        <thead><tr>
          <th>${t('approvals.kind')}</th><th>${t('approvals.what')}</th><th>${t('approvals.where')}</th>
          <th>${t('approvals.request')}</th><th>${t('approvals.by')}</th><th>${t('approvals.since')}</th><th></th>
        </tr></thead>
        <tbody>${data.items.map((i) => html`<tr key=${`${i.kind}/${i.id}`} class="clickable"
            data-testid=${`approvals-item-${i.id}`} onClick=${() => navigate('approvals', i.kind, i.id)}>
          <td><${Badge} text=${t(`approvals.kind.${i.kind}`)} tone=${i.kind === 'agent' ? 'info' : 'warn'} /></td>
          <td>${i.what}${i.tenant ? html`<br /><small class="muted">${t('approvals.tenant')}: ${i.tenant}</small>` : ''}</td>
          <td>${i.where || '—'}</td>
          <td class="clip">${clip(i.text, 90)}</td>
          <td>${i.by}</td>
          <td>${fmtTime(i.since)}</td>
          <td><a href=${`#/approvals/${i.kind}/${encodeURIComponent(i.id)}`} data-testid="approvals-open">${t('approvals.open')}</a></td>
        </tr>`)}</tbody></table></div>`}
  </div>`;
}

function clip(text, n) {
  if (!text) return '—';
  const s = String(text);
  return s.length <= n ? s : html`<span title=${s}>${s.slice(0, n)}…</span>`;
}

// ---- agent runs ---------------------------------------------------------------------

/** The cited passages of a run's events, each once. */
function citationsOf(events) {
  const seen = new Set();
  const out = [];
  for (const e of events || []) {
    if (e.type !== 'citations') continue;
    for (const c of e.citations || []) {
      const key = c.id || `${c.source}#${c.chunk_index}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(c);
    }
  }
  return out;
}

/** Inline styles (the shell's style.css is not ours to change). */
export const FACTS = 'display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem;margin:.25rem 0 1rem';
export const TEXT = 'white-space:pre-wrap;word-break:break-word;padding:.6rem .8rem;max-height:20rem;overflow:auto';

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function AgentItem({ id, listed, onDecided, navigate }) {
  const run = useAsync(() => api.get(`/v1/agents/runs/${seg(id)}`), [id]);
  const [answer, setAnswer] = useState(null);
  const [forms, setForms] = useState(null);
  const [comment, setComment] = useState('');
  const [reasonError, setReasonError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const [outcome, setOutcome] = useState(null);
  const r = run.data;
  const pending = (r && r.pending) || {};
  useEffect(() => {
    if (!r) return;
    setAnswer(pending.answer || '');
    setForms(JSON.parse(JSON.stringify(pending.forms || {})));
  }, [r && r.id]);
  if (run.error && !r) return html`<${ErrorBox} error=${run.error} testid="approvals-load-error" />`;
  if (!r || answer === null) return html`<${Loading} />`;
  const waiting = r.status === 'waiting';
  const answerEdited = answer !== (pending.answer || '');
  const formsEdited = !same(forms, pending.forms || {});
  const edited = answerEdited || formsEdited;

  const decide = async (action) => {
    setError(null);
    setReasonError(null);
    if (action === 'reject' && !comment.trim()) {
      setReasonError(t('approvals.reason_required'));
      return;
    }
    const body = { action, stream: false };
    if (comment.trim()) body.comment = comment.trim();
    if (action === 'approve' && edited) {
      body.action = 'edit';
      if (answerEdited) body.answer = answer;
      if (formsEdited) body.forms = forms;
    }
    setBusy(action);
    try {
      const done = await api.post(`/v1/agents/runs/${seg(id)}/resume`, body);
      setOutcome(done);
      onDecided();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
    }
  };

  return html`<article data-testid="approvals-detail">
    <header>
      <strong>${t('approvals.item_agent', { id })}</strong> <${StatusBadge} status=${outcome ? outcome.status : r.status} testid="approvals-status" />
    </header>
    <${AgentEvidence} run=${r} answer=${answer} setAnswer=${setAnswer} forms=${forms} setForms=${setForms}
      editable=${waiting && !outcome} />
    ${outcome
      ? html`<${AgentOutcome} run=${outcome} navigate=${navigate} />`
      : waiting
        ? html`<section data-testid="approvals-decide">
          <h4>${t('approvals.decide')}</h4>
          ${!listed && html`<p class="notice" data-testid="approvals-not-waiting">${t('approvals.not_waiting')}</p>`}
          <p class="muted"><small>${t('approvals.self_hint', { actor: r.actor })}</small></p>
          ${edited && html`<p class="notice" data-testid="approvals-edited">
            ${t('approvals.edited', { what: [answerEdited && t('approvals.edited_answer'), formsEdited && t('approvals.edited_forms')].filter(Boolean).join('、') })}
            <button type="button" class="secondary outline" style="width:auto;margin-left:.5rem;padding:.1rem .6rem"
              data-testid="approvals-reset" onClick=${() => { setAnswer(pending.answer || ''); setForms(JSON.parse(JSON.stringify(pending.forms || {}))); }}>${t('approvals.reset')}</button></p>`}
          <label>${t('approvals.comment')}
            <textarea rows="2" data-testid="approvals-comment" value=${comment} aria-invalid=${reasonError ? 'true' : undefined}
              onInput=${(e) => setComment(e.target.value)}></textarea>
            <small class="muted">${t('approvals.comment_hint')}</small>
            ${reasonError && html`<small class="field-error" role="alert" data-testid="approvals-reason-error">${reasonError}</small>`}
          </label>
          <div class="toolbar">
            <button type="button" data-testid="approvals-approve" disabled=${!!busy} aria-busy=${busy === 'approve'}
              onClick=${() => decide('approve')}>${edited ? t('approvals.approve_edited') : t('approvals.approve')}</button>
            <button type="button" class="danger" data-testid="approvals-reject" disabled=${!!busy} aria-busy=${busy === 'reject'}
              onClick=${() => decide('reject')}>${t('approvals.reject')}</button>
          </div>
          ${busy && html`<p class="muted" aria-busy="true">${t('approvals.deciding')}</p>`}
          <${ErrorBox} error=${error} testid="approvals-decision-error" />
        </section>`
        : html`<p class="notice" data-testid="approvals-decided">${t('approvals.decided', { status: r.status })}
            <a href="#" data-testid="approvals-open-run" onClick=${(e) => { e.preventDefault(); navigate('runs', 'agent', id); }}> ${t('approvals.open_run')}</a></p>`}
  </article>`;
}

function AgentEvidence({ run, answer, setAnswer, forms, setForms, editable }) {
  const pending = run.pending || {};
  const input = run.input || {};
  const events = run.events || [];
  const cites = citationsOf(events);
  const routes = events.filter((e) => e.type === 'route');
  const tools = events.filter((e) => e.type === 'tool');
  return html`<section data-testid="approvals-evidence">
    <h4>${t('approvals.evidence')}</h4>
    <dl style=${FACTS}>
      <dt>${t('approvals.graph')}</dt><dd data-testid="approvals-graph">${run.graph}</dd>
      <dt>${t('approvals.node')}</dt><dd data-testid="approvals-node">${pending.node || '—'}</dd>
      ${pending.prompt && html`<dt>${t('approvals.prompt')}</dt><dd data-testid="approvals-prompt"><strong>${pending.prompt}</strong></dd>`}
      <dt>${t('approvals.by')}</dt><dd>${run.actor}${run.tenant ? ` · ${t('approvals.tenant')}: ${run.tenant}` : ''}</dd>
      <dt>${t('approvals.since')}</dt><dd>${fmtTime(run.updated)}</dd>
    </dl>
    <h5>${t('approvals.the_request')}</h5>
    <blockquote data-testid="approvals-request">${input.input || '—'}
      ${(input.attachments || []).length > 0 && html`<br /><small class="muted">${t('approvals.attachments', { names: input.attachments.join(', ') })}</small>`}
    </blockquote>
    ${routes.map((e, i) => html`<p key=${i} class="muted" data-testid="approvals-route">${t('approvals.route', { node: e.node, arm: e.arm, p: fmtNum(e.propensity, 3) })}</p>`)}
    <${FormsEditor} forms=${forms} setForms=${setForms} editable=${editable} />
    <h5>${t('approvals.answer')}</h5>
    ${editable
      ? html`<label><textarea rows="6" data-testid="approvals-answer" value=${answer} onInput=${(e) => setAnswer(e.target.value)}></textarea>
          <small class="muted">${t('approvals.answer_hint')}</small></label>`
      : html`<pre style=${TEXT} data-testid="approvals-answer-text">${answer || t('approvals.no_answer')}</pre>`}
    <${Citations} cites=${cites} />
    ${tools.length > 0 && html`<details data-testid="approvals-tools"><summary>${t('approvals.tools')} (${tools.length})</summary>
      <ul>${tools.map((e, i) => html`<li key=${i}>${t('approvals.tool_line', { tool: e.tool, node: e.node })}
        <${Json} value=${e.arguments || {}} />
        ${e.error ? html`<p class="error">${t('approvals.tool_error', { error: e.error })}</p>` : html`<pre class="json">${e.result || ''}</pre>`}</li>`)}</ul>
    </details>`}
  </section>`;
}

function FormsEditor({ forms, setForms, editable }) {
  const names = Object.keys(forms || {});
  if (names.length === 0) return html`<h5>${t('approvals.forms')}</h5><p class="muted" data-testid="approvals-no-forms">${t('approvals.no_forms')}</p>`;
  const set = (form, field, raw, was) => {
    let value = raw;
    if (typeof was === 'number' && raw.trim() !== '' && !Number.isNaN(Number(raw))) value = Number(raw);
    setForms({ ...forms, [form]: { ...forms[form], [field]: value } });
  };
  return html`<h5>${t('approvals.forms')}</h5>
    ${names.map((form) => html`<div key=${form} class="table-wrap" data-testid=${`approvals-form-${form}`}>
      <table><caption class="muted">${t('approvals.form', { name: form })}</caption>
        <thead><tr><th>${t('approvals.field')}</th><th>${t('approvals.value')}</th></tr></thead>
        <tbody>${Object.entries(forms[form] || {}).map(([field, value]) => html`<tr key=${field}>
          <th scope="row">${field}</th>
          <td>${editable && (typeof value === 'string' || typeof value === 'number')
            ? html`<input data-testid=${`approvals-field-${form}-${field}`} value=${String(value)} style="margin:0"
                onInput=${(e) => set(form, field, e.target.value, value)} />`
            : html`<span data-testid=${`approvals-field-${form}-${field}`}>${typeof value === 'object' ? JSON.stringify(value) : String(value)}</span>`}</td>
        </tr>`)}</tbody></table></div>`)}`;
}

function Citations({ cites }) {
  if (!cites.length) return html`<h5>${t('approvals.citations', { n: 0 })}</h5><p class="muted">${t('approvals.no_citations')}</p>`;
  return html`<h5>${t('approvals.citations', { n: cites.length })}</h5>
    <ol data-testid="approvals-citations">${cites.map((c, i) => html`<li key=${i}>
      <details data-testid="approvals-citation"><summary>${c.title || c.record || c.source || c.kb}
        <small class="muted"> · ${c.kb}${c.version ? ` v${c.version}` : ''}${c.locator ? ` · ${c.locator}` : ''}</small></summary>
        <p class="muted"><small>${t('approvals.source', { source: c.source || '—' })}</small></p>
        <pre style=${TEXT} data-testid="approvals-passage">${c.text || ''}</pre>
      </details></li>`)}</ol>`;
}

function AgentOutcome({ run, navigate }) {
  return html`<section data-testid="approvals-outcome">
    <h4>${t('approvals.outcome')}</h4>
    <dl style=${FACTS}>
      <dt>${t('approvals.outcome_status')}</dt><dd><${StatusBadge} status=${run.status} testid="approvals-outcome-status" /></dd>
      ${run.reason && html`<dt>${t('approvals.outcome_reason')}</dt><dd data-testid="approvals-outcome-reason">${run.reason}</dd>`}
    </dl>
    <h5>${t('approvals.outcome_answer')}</h5>
    <pre style=${TEXT} data-testid="approvals-outcome-answer">${run.answer || '—'}</pre>
    <a href="#" data-testid="approvals-open-run" onClick=${(e) => { e.preventDefault(); navigate('runs', 'agent', run.id); }}>${t('approvals.open_run')}</a>
  </section>`;
}

// ---- pipeline runs --------------------------------------------------------------------

/** The metrics of the run's evaluation: the waiting step's, else an evaluate step's output. */
function metricsOf(run) {
  const w = run.waiting || {};
  if (w.metrics) return { metrics: w.metrics, failures: [] };
  for (const out of Object.values(run.outputs || {})) {
    if (out && typeof out === 'object' && out.metrics && typeof out.metrics === 'object') {
      return { metrics: out.metrics, failures: out.failures || [] };
    }
  }
  return null;
}

function PipelineItem({ id, listed, onDecided, navigate }) {
  const [decided, setDecided] = useState(false);
  const run = usePoll(() => api.get(`/v1/pipelines/${seg(id)}`), decided ? 3000 : 0, [id, decided]);
  const [comment, setComment] = useState('');
  const [reasonError, setReasonError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const r = run.data;
  if (run.error && !r) return html`<${ErrorBox} error=${run.error} testid="approvals-load-error" />`;
  if (!r) return html`<${Loading} />`;
  const waiting = r.status === 'waiting';
  const decide = async (approve) => {
    setError(null);
    setReasonError(null);
    if (!approve && !comment.trim()) {
      setReasonError(t('approvals.reason_required'));
      return;
    }
    setBusy(approve ? 'approve' : 'reject');
    try {
      await api.post(`/v1/pipelines/${seg(id)}/approve`, { approve, reason: comment.trim() });
      setDecided(true);
      onDecided();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
    }
  };
  return html`<article data-testid="approvals-detail">
    <header><strong>${t('approvals.item_pipeline', { id })}</strong> <${StatusBadge} status=${r.status} testid="approvals-status" /></header>
    <${PipelineEvidence} run=${r} />
    ${decided
      ? html`<section data-testid="approvals-outcome"><h4>${t('approvals.outcome')}</h4>
          <p>${t('approvals.outcome_pipeline')}</p>
          <dl style=${FACTS}><dt>${t('approvals.outcome_status')}</dt><dd><${StatusBadge} status=${r.status} testid="approvals-outcome-status" /></dd>
          ${r.error && html`<dt>${t('approvals.outcome_reason')}</dt><dd>${r.error}</dd>`}</dl>
          <a href="#" data-testid="approvals-open-run" onClick=${(e) => { e.preventDefault(); navigate('runs', 'pipeline', id); }}>${t('approvals.open_run')}</a></section>`
      : waiting
        ? html`<section data-testid="approvals-decide">
          <h4>${t('approvals.decide')}</h4>
          ${!listed && html`<p class="notice" data-testid="approvals-not-waiting">${t('approvals.not_waiting')}</p>`}
          <p class="muted"><small>${t('approvals.self_hint', { actor: r.actor })}</small></p>
          <label>${t('approvals.comment')}
            <textarea rows="2" data-testid="approvals-comment" value=${comment} aria-invalid=${reasonError ? 'true' : undefined}
              onInput=${(e) => setComment(e.target.value)}></textarea>
            <small class="muted">${t('approvals.comment_hint')}</small>
            ${reasonError && html`<small class="field-error" role="alert" data-testid="approvals-reason-error">${reasonError}</small>`}
          </label>
          <div class="toolbar">
            <button type="button" data-testid="approvals-approve" disabled=${!!busy} aria-busy=${busy === 'approve'}
              onClick=${() => decide(true)}>${t('approvals.approve')}</button>
            <button type="button" class="danger" data-testid="approvals-reject" disabled=${!!busy} aria-busy=${busy === 'reject'}
              onClick=${() => decide(false)}>${t('approvals.reject')}</button>
          </div>
          <${ErrorBox} error=${error} testid="approvals-decision-error" />
        </section>`
        : html`<p class="notice" data-testid="approvals-decided">${t('approvals.decided', { status: r.status })}
            <a href="#" data-testid="approvals-open-run" onClick=${(e) => { e.preventDefault(); navigate('runs', 'pipeline', id); }}> ${t('approvals.open_run')}</a></p>`}
  </article>`;
}

function PipelineEvidence({ run }) {
  const w = run.waiting || {};
  const m = metricsOf(run);
  return html`<section data-testid="approvals-evidence">
    <h4>${t('approvals.evidence')}</h4>
    <dl style=${FACTS}>
      <dt>${t('approvals.pipeline')}</dt><dd data-testid="approvals-graph">${run.pipeline}</dd>
      <dt>${t('approvals.step')}</dt><dd data-testid="approvals-node">${w.step || run.step || '—'}</dd>
      ${w.kind && html`<dt>${t('approvals.step_kind')}</dt><dd>${t(`approvals.step_kind.${w.kind}`)}</dd>`}
      ${w.message && html`<dt>${t('approvals.message')}</dt><dd data-testid="approvals-prompt"><strong>${w.message}</strong></dd>`}
      ${w.adapter && html`<dt>${t('approvals.adapter')}</dt><dd data-testid="approvals-adapter">${w.adapter}</dd>`}
      <dt>${t('approvals.by')}</dt><dd>${run.actor}</dd>
      <dt>${t('approvals.since')}</dt><dd>${fmtTime(run.updated)}</dd>
    </dl>
    <h5>${t('approvals.metrics')}</h5>
    ${m ? html`<${Metrics} metrics=${m.metrics} failures=${m.failures} />` : html`<p class="muted">${t('approvals.no_metrics')}</p>`}
    ${w.kind === 'promote' && html`<${CanaryFigures} waiting=${w} />`}
    ${run.outputs && Object.keys(run.outputs).length > 0 && html`<${Json} value=${run.outputs} label=${t('approvals.outputs')} />`}
  </section>`;
}

function Metrics({ metrics, failures }) {
  const rows = Object.entries(metrics || {}).filter(([, v]) => v && typeof v === 'object' && ('base' in v || 'adapter' in v));
  if (!rows.length) return html`<${Json} value=${metrics} />`;
  return html`<div class="table-wrap"><table class="striped" data-testid="approvals-metrics">
    <thead><tr><th>${t('approvals.metric')}</th><th>${t('approvals.base')}</th><th>${t('approvals.adapter_col')}</th><th>${t('approvals.delta')}</th></tr></thead>
    <tbody>${rows.map(([name, v]) => {
      const delta = typeof v.base === 'number' && typeof v.adapter === 'number' ? v.adapter - v.base : null;
      return html`<tr key=${name}><th scope="row">${name}</th><td>${fmtNum(v.base, 3)}</td><td>${fmtNum(v.adapter, 3)}</td>
        <td><${Badge} text=${delta === null ? '—' : `${delta >= 0 ? '+' : ''}${fmtNum(delta, 3)}`} tone=${delta === null ? 'muted' : delta >= 0 ? 'ok' : 'bad'} /></td></tr>`;
    })}</tbody></table></div>
    ${failures && failures.length > 0 && html`<p class="error">${t('approvals.gate_failures', { list: failures.join('; ') })}</p>`}`;
}

function CanaryFigures({ waiting }) {
  const canary = waiting.canary || {};
  const share = ((canary.traffic || {})[canary.loaded_as]) ?? null;
  const f = waiting.figures;
  return html`<h5>${t('approvals.canary')}</h5>
    <p class="muted">${t('approvals.canary_share', { deployment: canary.deployment || '—', share: share === null ? '—' : `${fmtNum(share * 100, 1)}%` })}</p>
    ${!f
      ? html`<p class="muted">${t('approvals.no_figures')}</p>`
      : html`<div class="table-wrap"><table class="striped" data-testid="approvals-canary">
        <thead><tr><th>${t('approvals.arm')}</th><th>${t('approvals.requests')}</th><th>${t('approvals.errors')}</th>
          <th>${t('approvals.error_rate')}</th><th>${t('approvals.latency')}</th></tr></thead>
        <tbody>${[['canary_arm', f.canary], ['baseline_arm', f.baseline]].map(([label, a]) => a && html`<tr key=${label}>
          <th scope="row">${t(`approvals.${label}`)} <small class="muted">${a.arm || ''}</small></th>
          <td>${fmtNum(a.requests)}</td><td>${fmtNum(a.errors)}</td>
          <td>${a.error_rate === undefined ? '—' : `${fmtNum(a.error_rate * 100, 2)}%`}</td><td>${fmtMs(a.mean_latency_ms)}</td></tr>`)}</tbody>
      </table></div>
      <p class="muted"><small>${t('approvals.figures_at', { time: fmtTime(f.at) })}</small></p>`}`;
}
