// Runs: agent runs (GET /v1/agents/runs) as a timeline of their stored events — nodes,
// route decisions with their propensity, tool calls with arguments and results, citations,
// approvals (decision, who, comment), the final status and answer — and pipeline runs
// (GET /v1/pipelines) with each step's state, attempts, log and output, and the buttons
// resume / cancel / approve where the key's scopes allow. Live runs are read again every 3 s.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, can, seg, session } from '../lib/api.js';
import { fmtMs, fmtNum, fmtTime, t } from '../lib/i18n.js';
import { Badge, Empty, ErrorBox, html, Json, Loading, StatusBadge, Tabs, usePoll } from '../lib/ui.js';

export const strings = {
  zh: {
    'runs.title': '运行记录',
    'runs.tab.agent': '智能体运行',
    'runs.tab.pipeline': '流水线运行',
    'runs.status': '状态',
    'runs.all': '全部',
    'runs.graph': '智能体流程',
    'runs.graph_any': '全部流程',
    'runs.limit': '显示条数',
    'runs.refresh': '刷新',
    'runs.live': '有运行尚未结束,每 3 秒自动刷新',
    'runs.empty_agent': '没有符合条件的智能体运行。',
    'runs.empty_pipeline': '还没有流水线运行。',
    'runs.id': '编号',
    'runs.input': '请求',
    'runs.answer': '答复',
    'runs.actor': '发起人',
    'runs.tenant': '租户',
    'runs.created': '开始时间',
    'runs.updated': '更新时间',
    'runs.tokens': '令牌数',
    'runs.active': '运行时长',
    'runs.back': '← 返回列表',
    'runs.run': '智能体运行 {id}',
    'runs.summary': '概要',
    'runs.request': '请求',
    'runs.attachments': '附件',
    'runs.final_answer': '最终答复',
    'runs.reason': '原因',
    'runs.parent': '上级运行',
    'runs.waiting_for': '正在等待审批:节点 {node}',
    'runs.open_approval': '去审批',
    'runs.timeline': '时间线({n} 个事件)',
    'runs.counts': '{nodes} 个节点 · {tools} 次工具调用 · {routes} 次路由 · {cites} 条引用 · {approvals} 次审批',
    'runs.no_events': '这次运行没有记录事件。',
    'runs.no_timestamps': '事件没有单独记录时间;总耗时见概要。',
    'runs.ev.run': '开始运行流程 {graph}',
    'runs.ev.node': '进入节点 {node}',
    'runs.ev.node_agent': '(智能体 {agent})',
    'runs.ev.node_tool': '(工具 {tool})',
    'runs.ev.node_graph': '(子流程 {graph})',
    'runs.ev.route': '路由 {node}:选择 {arm}',
    'runs.ev.propensity': '倾向概率 {p}',
    'runs.ev.scores': '各分支得分',
    'runs.ev.tool': '调用工具 {tool}(节点 {node})',
    'runs.ev.replayed': '重放(未重复执行)',
    'runs.ev.arguments': '参数',
    'runs.ev.result': '结果',
    'runs.ev.error': '出错:{error}',
    'runs.ev.citations': '引用资料 {n} 条(节点 {node})',
    'runs.ev.approval': '审批:{action}',
    'runs.ev.approval_by': '审批人 {actor}',
    'runs.ev.comment': '意见:{comment}',
    'runs.ev.edited_answer': '修改后的答复',
    'runs.ev.edited_forms': '修改后的表单',
    'runs.ev.model': '节点 {node} 调用模型 {model},由以下应答:',
    'runs.ev.base_model': '基础模型',
    'runs.ev.model_tokens': '{n} 个令牌',
    'runs.ev.recovered': '副本重启后从检查点恢复运行',
    'runs.ev.status': '状态变为 {status}',
    'runs.ev.token': '生成 {n} 个令牌',
    'runs.ev.other': '事件 {type}',
    'runs.ev.forms': '表单内容',
    'runs.action.approve': '批准',
    'runs.action.edit': '修改后批准',
    'runs.action.reject': '驳回',
    'runs.source': '来源:{source}',
    'runs.pipeline': '流水线',
    'runs.step': '当前步骤',
    'runs.error': '错误',
    'runs.prun': '流水线运行 {id}',
    'runs.steps': '步骤',
    'runs.step_name': '步骤',
    'runs.step_type': '类型',
    'runs.step_state': '状态',
    'runs.attempts': '尝试次数',
    'runs.duration': '耗时',
    'runs.progress': '进度',
    'runs.progress_line': '第 {step}/{total} 步 · 损失 {loss}',
    'runs.log': '日志与输出',
    'runs.output': '输出',
    'runs.no_steps': '还没有步骤开始。',
    'runs.all_events': '全部事件({n})',
    'runs.waiting_msg': '等待审批:{message}',
    'runs.resume': '继续运行',
    'runs.cancel': '取消运行',
    'runs.approve': '批准',
    'runs.reject': '驳回',
    'runs.reason_label': '理由(驳回和取消时必填)',
    'runs.reason_required': '请填写理由。',
    'runs.done_action': '已提交:{action}。',
    'runs.tenant_no_pipelines': '当前密钥绑定了租户,不能查看流水线(流水线影响所有租户)。',
    'runs.no_pipeline_scope': '当前密钥没有 deploy 或 approve 权限,不能查看流水线。',
    'runs.no_agent_scope': '当前密钥没有 agents:run 或 approve 权限,不能查看智能体运行。',
    'runs.feedback': '评分',
    'runs.no_feedback': '还没有人给这次运行评分(在对话页或 POST /v1/feedback 评分,路由器据此学习)。',
    'runs.state.running': '运行中',
    'runs.state.finished': '完成',
    'runs.state.failed': '失败',
    'runs.state.waiting': '等待审批',
    'runs.state.gated': '未过门槛',
  },
  en: {
    'runs.title': 'Runs',
    'runs.tab.agent': 'Agent runs',
    'runs.tab.pipeline': 'Pipeline runs',
    'runs.status': 'Status',
    'runs.all': 'all',
    'runs.graph': 'Agent graph',
    'runs.graph_any': 'all graphs',
    'runs.limit': 'Show',
    'runs.refresh': 'Refresh',
    'runs.live': 'Some runs are not finished: refreshed every 3 s',
    'runs.empty_agent': 'No agent runs match.',
    'runs.empty_pipeline': 'No pipeline runs yet.',
    'runs.id': 'ID',
    'runs.input': 'Request',
    'runs.answer': 'Answer',
    'runs.actor': 'Started by',
    'runs.tenant': 'Tenant',
    'runs.created': 'Started',
    'runs.updated': 'Updated',
    'runs.tokens': 'Tokens',
    'runs.active': 'Active time',
    'runs.back': '← Back to the list',
    'runs.run': 'Agent run {id}',
    'runs.summary': 'Summary',
    'runs.request': 'Request',
    'runs.attachments': 'Attachments',
    'runs.final_answer': 'Final answer',
    'runs.reason': 'Reason',
    'runs.parent': 'Parent run',
    'runs.waiting_for': 'Waiting for approval at node {node}',
    'runs.open_approval': 'Decide it',
    'runs.timeline': 'Timeline ({n} events)',
    'runs.counts': '{nodes} nodes · {tools} tool calls · {routes} routes · {cites} citations · {approvals} approvals',
    'runs.no_events': 'No events were recorded for this run.',
    'runs.no_timestamps': 'Events carry no time of their own; the total time is in the summary.',
    'runs.ev.run': 'Run of graph {graph} started',
    'runs.ev.node': 'Node {node}',
    'runs.ev.node_agent': ' (agent {agent})',
    'runs.ev.node_tool': ' (tool {tool})',
    'runs.ev.node_graph': ' (nested graph {graph})',
    'runs.ev.route': 'Route at {node}: {arm}',
    'runs.ev.propensity': 'propensity {p}',
    'runs.ev.scores': 'Scores per arm',
    'runs.ev.tool': 'Tool {tool} (node {node})',
    'runs.ev.replayed': 'replayed (not run again)',
    'runs.ev.arguments': 'Arguments',
    'runs.ev.result': 'Result',
    'runs.ev.error': 'Error: {error}',
    'runs.ev.citations': '{n} sources cited (node {node})',
    'runs.ev.approval': 'Approval: {action}',
    'runs.ev.approval_by': 'by {actor}',
    'runs.ev.comment': 'Comment: {comment}',
    'runs.ev.edited_answer': 'Edited answer',
    'runs.ev.edited_forms': 'Edited forms',
    'runs.ev.model': 'Node {node} called {model}; answered by',
    'runs.ev.base_model': 'the base model',
    'runs.ev.model_tokens': '{n} tokens',
    'runs.ev.recovered': 'Resumed from its checkpoint after a replica restart',
    'runs.ev.status': 'Status: {status}',
    'runs.ev.token': '{n} tokens generated',
    'runs.ev.other': 'Event {type}',
    'runs.ev.forms': 'Forms',
    'runs.action.approve': 'approved',
    'runs.action.edit': 'edited and approved',
    'runs.action.reject': 'rejected',
    'runs.source': 'Source: {source}',
    'runs.pipeline': 'Pipeline',
    'runs.step': 'Current step',
    'runs.error': 'Error',
    'runs.prun': 'Pipeline run {id}',
    'runs.steps': 'Steps',
    'runs.step_name': 'Step',
    'runs.step_type': 'Type',
    'runs.step_state': 'State',
    'runs.attempts': 'Attempts',
    'runs.duration': 'Took',
    'runs.progress': 'Progress',
    'runs.progress_line': 'step {step}/{total} · loss {loss}',
    'runs.log': 'Log and output',
    'runs.output': 'Output',
    'runs.no_steps': 'No step has started yet.',
    'runs.all_events': 'All events ({n})',
    'runs.waiting_msg': 'Waiting for approval: {message}',
    'runs.resume': 'Resume',
    'runs.cancel': 'Cancel the run',
    'runs.approve': 'Approve',
    'runs.reject': 'Reject',
    'runs.reason_label': 'Reason (required to reject or cancel)',
    'runs.reason_required': 'Give a reason.',
    'runs.done_action': 'Sent: {action}.',
    'runs.tenant_no_pipelines': 'This key is bound to a tenant: pipelines (which affect every tenant) are not shown.',
    'runs.no_pipeline_scope': 'This key has neither the deploy nor the approve scope: pipelines are not shown.',
    'runs.no_agent_scope': 'This key has neither the agents:run nor the approve scope: agent runs are not shown.',
    'runs.feedback': 'Feedback',
    'runs.no_feedback': 'Nobody has rated this run yet (rate it in Chat or with POST /v1/feedback; the router learns from it).',
    'runs.state.running': 'running',
    'runs.state.finished': 'finished',
    'runs.state.failed': 'failed',
    'runs.state.waiting': 'waiting for approval',
    'runs.state.gated': 'gate missed',
  },
};

const AGENT_STATUSES = ['running', 'waiting', 'done', 'rejected', 'stopped', 'failed'];
const AGENT_FINAL = new Set(['done', 'rejected', 'stopped', 'failed']);
const PIPELINE_FINAL = new Set(['succeeded', 'failed', 'gated', 'rejected', 'rolled_back', 'cancelled', 'interrupted']);
const FACTS = 'display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem;margin:.25rem 0 1rem';
const TEXT = 'white-space:pre-wrap;word-break:break-word;padding:.6rem .8rem;max-height:20rem;overflow:auto';

const seesAgents = () => can('agents:run', 'approve');
/** A key with a `tenant:` scope is refused the platform-wide pipeline routes (admin is not). */
const tenantBound = () => {
  const scopes = (session.whoami && session.whoami.scopes) || [];
  return !scopes.includes('admin') && scopes.some((s) => s.startsWith('tenant:'));
};
const seesPipelines = () => can('deploy', 'approve') && !tenantBound();

export default function Page({ args, navigate }) {
  const [tab, id] = args;
  const active = tab === 'pipeline' || (!tab && !seesAgents()) ? 'pipeline' : 'agent';
  const tabs = [
    { id: 'agent', label: t('runs.tab.agent') },
    { id: 'pipeline', label: t('runs.tab.pipeline') },
  ];
  let body;
  if (active === 'agent') {
    if (!seesAgents()) body = html`<p class="notice">${t('runs.no_agent_scope')}</p>`;
    else body = id ? html`<${AgentRun} key=${id} id=${id} navigate=${navigate} />` : html`<${AgentRuns} navigate=${navigate} />`;
  } else if (tenantBound()) {
    body = html`<p class="notice" data-testid="runs-pipelines-hidden">${t('runs.tenant_no_pipelines')}</p>`;
  } else if (!seesPipelines()) {
    body = html`<p class="notice">${t('runs.no_pipeline_scope')}</p>`;
  } else {
    body = id ? html`<${PipelineRun} key=${id} id=${id} navigate=${navigate} />` : html`<${PipelineRuns} navigate=${navigate} />`;
  }
  return html`<section data-testid="runs">
    <h2>${t('runs.title')}</h2>
    <${Tabs} tabs=${tabs} active=${active} onChange=${(next) => navigate('runs', next)} testid="runs-tabs" />
    ${body}
  </section>`;
}

function shortId(id) {
  return id && id.length > 16 ? html`<code title=${id}>${id.slice(0, 8)}…${id.slice(-6)}</code>` : html`<code>${id}</code>`;
}

function clip(text, n = 60) {
  if (text === null || text === undefined || text === '') return '—';
  const s = String(text);
  return s.length <= n ? s : html`<span title=${s}>${s.slice(0, n)}…</span>`;
}

function Back({ navigate, tab }) {
  return html`<p><a href=${`#/runs/${tab}`} data-testid="runs-back" onClick=${(e) => { e.preventDefault(); navigate('runs', tab); }}>${t('runs.back')}</a></p>`;
}

// ---- agent runs ---------------------------------------------------------------------

function AgentRuns({ navigate }) {
  const [status, setStatus] = useState('');
  const [graph, setGraph] = useState('');
  const [limit, setLimit] = useState(50);
  const [live, setLive] = useState(false);
  const [graphs, setGraphs] = useState([]);
  const runs = usePoll(async () => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (status) q.set('status', status);
    if (graph) q.set('graph', graph);
    const data = (await api.get(`/v1/agents/runs?${q}`)).data || [];
    setLive(data.some((r) => !AGENT_FINAL.has(r.status)));
    setGraphs((known) => [...new Set([...known, ...data.map((r) => r.graph)])].sort());
    return data;
  }, live ? 3000 : 0, [status, graph, limit]);
  useEffect(() => {
    if (!can('agents:run')) return;
    api.get('/v1/agents').then(
      (g) => setGraphs((known) => [...new Set([...known, ...(g.data || []).map((x) => x.id)])].sort()),
      () => {}, // the list of graphs only helps the filter; the runs say what went wrong
    );
  }, []);
  const rows = runs.data || [];
  return html`<div>
    <div class="toolbar">
      <label>${t('runs.status')}
        <select data-testid="runs-status" value=${status} onChange=${(e) => setStatus(e.target.value)}>
          <option value="">${t('runs.all')}</option>
          ${AGENT_STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select></label>
      <label>${t('runs.graph')}
        <select data-testid="runs-graph" value=${graph} onChange=${(e) => setGraph(e.target.value)}>
          <option value="">${t('runs.graph_any')}</option>
          ${graphs.map((g) => html`<option value=${g}>${g}</option>`)}
        </select></label>
      <label>${t('runs.limit')}
        <select data-testid="runs-limit" value=${String(limit)} onChange=${(e) => setLimit(Number(e.target.value))}>
          ${[20, 50, 200, 500].map((n) => html`<option value=${String(n)}>${n}</option>`)}
        </select></label>
      <button type="button" class="secondary" data-testid="runs-refresh" aria-busy=${runs.loading} onClick=${runs.reload}>${t('runs.refresh')}</button>
    </div>
    ${live && html`<p class="muted" data-testid="runs-live"><small>${t('runs.live')}</small></p>`}
    <${ErrorBox} error=${runs.error} testid="runs-error" />
    ${!runs.data && !runs.error
      ? html`<${Loading} />`
      : rows.length === 0
        ? html`<div data-testid="runs-empty"><${Empty} text=${t('runs.empty_agent')} /></div>`
        : html`<div class="table-wrap"><table class="striped" data-testid="runs-list">
          <thead><tr><th>${t('runs.id')}</th><th>${t('runs.graph')}</th><th>${t('runs.status')}</th><th>${t('runs.input')}</th>
            <th>${t('runs.answer')}</th><th>${t('runs.actor')}</th><th>${t('runs.created')}</th><th>${t('runs.tokens')}</th></tr></thead>
          <tbody>${rows.map((r) => html`<tr key=${r.id} class="clickable" data-testid=${`runs-row-${r.id}`}
              onClick=${() => navigate('runs', 'agent', r.id)}>
            <td>${shortId(r.id)}</td>
            <td>${r.graph}${r.tenant ? html`<br /><small class="muted">${t('runs.tenant')}: ${r.tenant}</small>` : ''}</td>
            <td><${StatusBadge} status=${r.status} /></td>
            <td>${clip(r.input && r.input.input)}</td>
            <td>${clip(r.answer || r.reason)}</td>
            <td>${r.actor}</td>
            <td>${fmtTime(r.created)}</td>
            <td>${fmtNum(r.tokens)}</td>
          </tr>`)}</tbody></table></div>`}
  </div>`;
}

function AgentRun({ id, navigate }) {
  const [live, setLive] = useState(true);
  const run = usePoll(async () => {
    const r = await api.get(`/v1/agents/runs/${seg(id)}`);
    setLive(!AGENT_FINAL.has(r.status));
    return r;
  }, live ? 3000 : 0, [id]);
  const r = run.data;
  if (!r) return html`<${Back} navigate=${navigate} tab="agent" />${run.error ? html`<${ErrorBox} error=${run.error} testid="runs-error" />` : html`<${Loading} />`}`;
  const events = r.events || [];
  const input = r.input || {};
  const count = (type) => events.filter((e) => e.type === type).length;
  const cites = events.filter((e) => e.type === 'citations').reduce((n, e) => n + (e.citations || []).length, 0);
  return html`<${Back} navigate=${navigate} tab="agent" />
  <article data-testid="runs-detail">
    <header><strong>${t('runs.run', { id: r.id })}</strong> <${StatusBadge} status=${r.status} testid="runs-run-status" /></header>
    <${ErrorBox} error=${run.error} testid="runs-error" />
    <dl style=${FACTS} data-testid="runs-summary">
      <dt>${t('runs.graph')}</dt><dd data-testid="runs-run-graph">${r.graph}</dd>
      <dt>${t('runs.actor')}</dt><dd>${r.actor}</dd>
      ${r.tenant && html`<dt>${t('runs.tenant')}</dt><dd>${r.tenant}</dd>`}
      ${r.parent && html`<dt>${t('runs.parent')}</dt><dd><a href=${`#/runs/agent/${encodeURIComponent(r.parent)}`}>${r.parent}</a></dd>`}
      <dt>${t('runs.created')}</dt><dd>${fmtTime(r.created)}</dd>
      <dt>${t('runs.updated')}</dt><dd>${fmtTime(r.updated)}</dd>
      <dt>${t('runs.active')}</dt><dd data-testid="runs-run-active">${fmtMs((r.active_s || 0) * 1000)}</dd>
      <dt>${t('runs.tokens')}</dt><dd data-testid="runs-run-tokens">${fmtNum(r.tokens)}</dd>
      ${r.reason && html`<dt>${t('runs.reason')}</dt><dd data-testid="runs-run-reason">${r.reason}</dd>`}
    </dl>
    <h5>${t('runs.request')}</h5>
    <blockquote data-testid="runs-run-input">${input.input || '—'}
      ${(input.attachments || []).length > 0 && html`<br /><small class="muted">${t('runs.attachments')}: ${input.attachments.join(', ')}</small>`}</blockquote>
    ${r.status === 'waiting' && r.pending && html`<p class="notice" data-testid="runs-waiting">${t('runs.waiting_for', { node: r.pending.node || '—' })}
      ${can('approve') && html` <a href=${`#/approvals/agent/${encodeURIComponent(r.id)}`} data-testid="runs-open-approval">${t('runs.open_approval')}</a>`}</p>`}
    <h5>${t('runs.final_answer')}</h5>
    <pre style=${TEXT} data-testid="runs-run-answer">${r.answer || '—'}</pre>
    <h5>${t('runs.feedback')}</h5>
    ${(r.feedback || []).length === 0
      ? html`<p class="muted" data-testid="runs-no-feedback"><small>${t('runs.no_feedback')}</small></p>`
      : html`<ul data-testid="runs-feedback">${r.feedback.map((f, i) => html`<li key=${i}>
          <strong>${f.score > 0 ? '+' : ''}${fmtNum(f.score)}</strong> · ${f.actor} · ${fmtTime(f.at)}${f.comment ? ` — ${f.comment}` : ''}</li>`)}</ul>`}
    <h4>${t('runs.timeline', { n: events.length })}</h4>
    <p class="muted" data-testid="runs-counts"><small>${t('runs.counts', {
      nodes: count('node'), tools: count('tool'), routes: count('route'), cites, approvals: count('approval'),
    })}</small></p>
    ${events.length === 0
      ? html`<${Empty} text=${t('runs.no_events')} />`
      : html`<ol class="timeline" data-testid="runs-timeline">${events.map((e, i) => html`<${AgentEvent} key=${e.seq || i} event=${e} start=${r.created} />`)}</ol>
        ${!events.some((e) => e.at) && html`<p class="muted"><small>${t('runs.no_timestamps')}</small></p>`}`}
  </article>`;
}

function AgentEvent({ event: e, start }) {
  const at = e.at ? html`<small class="muted"> +${fmtMs((e.at - start) * 1000)}</small>` : '';
  const testid = `runs-event-${e.type}`;
  switch (e.type) {
    case 'run':
      return html`<li data-testid=${testid}>${t('runs.ev.run', { graph: e.graph })}${at}</li>`;
    case 'node': {
      const extra = e.agent ? t('runs.ev.node_agent', { agent: e.agent }) : e.tool ? t('runs.ev.node_tool', { tool: e.tool })
        : e.graph ? t('runs.ev.node_graph', { graph: e.graph }) : '';
      return html`<li data-testid=${testid}><strong>${t('runs.ev.node', { node: e.node })}</strong>${extra}${at}</li>`;
    }
    case 'route':
      return html`<li data-testid=${testid}><strong>${t('runs.ev.route', { node: e.node, arm: e.arm })}</strong>${' '}<${Badge} text=${t('runs.ev.propensity', { p: fmtNum(e.propensity, 3) })} tone="info" />${at}
        ${e.scores && html`<details><summary>${t('runs.ev.scores')}</summary><${Json} value=${e.scores} /></details>`}</li>`;
    case 'tool':
      return html`<li data-testid=${testid}><strong>${t('runs.ev.tool', { tool: e.tool, node: e.node })}</strong>
        ${e.replayed && html` <${Badge} text=${t('runs.ev.replayed')} />`}${at}
        ${e.error && html`<p class="error">${t('runs.ev.error', { error: e.error })}</p>`}
        <details><summary>${t('runs.ev.arguments')}</summary><${Json} value=${e.arguments || {}} /></details>
        ${e.result && html`<details><summary>${t('runs.ev.result')}</summary><pre style=${TEXT}>${e.result}</pre></details>`}</li>`;
    case 'citations':
      return html`<li data-testid=${testid}>${t('runs.ev.citations', { n: (e.citations || []).length, node: e.node })}${at}
        ${(e.citations || []).map((c, i) => html`<details key=${i} data-testid="runs-citation"><summary>[${i + 1}] ${c.title || c.record || c.source}
          <small class="muted"> · ${c.kb}${c.locator ? ` · ${c.locator}` : ''}</small></summary>
          <pre style=${TEXT}>${c.text || ''}</pre></details>`)}</li>`;
    case 'approval':
      return html`<li data-testid=${testid}><strong>${t('runs.ev.approval', { action: t(`runs.action.${e.action}`) })}</strong>${' · '}<span data-testid="runs-approval-actor">${t('runs.ev.approval_by', { actor: e.actor })}</span>${at}
        ${e.comment && html`<p data-testid="runs-approval-comment">${t('runs.ev.comment', { comment: e.comment })}</p>`}
        ${e.answer && html`<details open><summary>${t('runs.ev.edited_answer')}</summary><pre style=${TEXT}>${e.answer}</pre></details>`}
        ${e.forms && html`<details><summary>${t('runs.ev.edited_forms')}</summary><${Json} value=${e.forms} /></details>`}</li>`;
    case 'model':
      return html`<li data-testid=${testid}>${t('runs.ev.model', { node: e.node, model: e.model })}
        <strong>${e.adapter ? `${e.adapter}${e.adapter_ref ? ` (${e.adapter_ref})` : ''}` : t('runs.ev.base_model')}</strong>
        <small class="muted"> · ${t('runs.ev.model_tokens', { n: fmtNum(e.tokens) })}</small>${at}</li>`;
    case 'recovered':
      return html`<li data-testid=${testid}>${t('runs.ev.recovered')}${at}</li>`;
    case 'token':
      return html`<li data-testid=${testid}>${t('runs.ev.token', { n: 1 })}${at}</li>`;
    case 'status':
      return html`<li data-testid=${testid}><strong>${t('runs.ev.status', { status: '' })}</strong><${StatusBadge} status=${e.status} />${at}
        ${e.reason && html`<p class=${e.status === 'failed' || e.status === 'stopped' ? 'error' : 'muted'}>${e.reason}</p>`}
        ${e.answer && html`<pre style=${TEXT}>${e.answer}</pre>`}
        ${e.forms && html`<details><summary>${t('runs.ev.forms')}</summary><${Json} value=${e.forms} /></details>`}</li>`;
    default:
      return html`<li data-testid=${testid}>${t('runs.ev.other', { type: e.type })}${at}<${Json} value=${e} /></li>`;
  }
}

// ---- pipeline runs --------------------------------------------------------------------

function PipelineRuns({ navigate }) {
  const [live, setLive] = useState(false);
  const runs = usePoll(async () => {
    const data = (await api.get('/v1/pipelines?limit=100')).data || [];
    setLive(data.some((r) => !PIPELINE_FINAL.has(r.status)));
    return data;
  }, live ? 3000 : 0, []);
  const rows = runs.data || [];
  return html`<div>
    <div class="toolbar"><button type="button" class="secondary" data-testid="runs-refresh" aria-busy=${runs.loading} onClick=${runs.reload}>${t('runs.refresh')}</button></div>
    ${live && html`<p class="muted" data-testid="runs-live"><small>${t('runs.live')}</small></p>`}
    <${ErrorBox} error=${runs.error} testid="runs-error" />
    ${!runs.data && !runs.error
      ? html`<${Loading} />`
      : rows.length === 0
        ? html`<div data-testid="runs-empty"><${Empty} text=${t('runs.empty_pipeline')} /></div>`
        : html`<div class="table-wrap"><table class="striped" data-testid="runs-pipeline-list">
          <thead><tr><th>${t('runs.id')}</th><th>${t('runs.pipeline')}</th><th>${t('runs.status')}</th><th>${t('runs.step')}</th>
            <th>${t('runs.actor')}</th><th>${t('runs.created')}</th><th>${t('runs.updated')}</th></tr></thead>
          <tbody>${rows.map((r) => html`<tr key=${r.id} class="clickable" data-testid=${`runs-prow-${r.id}`}
              onClick=${() => navigate('runs', 'pipeline', r.id)}>
            <td><code>${r.id}</code></td><td>${r.pipeline}</td><td><${StatusBadge} status=${r.status} /></td>
            <td>${r.step || '—'}${r.error ? html`<br /><small class="error">${clip(r.error, 80)}</small>` : ''}</td>
            <td>${r.actor}</td><td>${fmtTime(r.created)}</td><td>${fmtTime(r.updated)}</td>
          </tr>`)}</tbody></table></div>`}
  </div>`;
}

/** Steps in the order they first started, with their state, attempts and events. */
function stepsOf(events) {
  const steps = new Map();
  for (const e of events) {
    if (!e.step) continue;
    if (!steps.has(e.step)) steps.set(e.step, { name: e.step, type: null, state: null, attempts: 0, seconds: null, progress: null, events: [] });
    const s = steps.get(e.step);
    s.events.push(e);
    if (e.kind === 'started') {
      s.attempts += 1;
      s.type = e.type || s.type;
      s.state = 'running';
    } else if (e.kind === 'finished') {
      s.state = e.outcome && e.outcome !== 'ok' ? e.outcome : 'finished';
      s.seconds = e.seconds;
    } else if (e.kind === 'failed') s.state = 'failed';
    else if (e.kind === 'waiting') s.state = 'waiting';
    else if (e.kind === 'decision' || e.kind === 'resumed') s.state = 'running';
    else if (e.kind === 'progress') s.progress = e;
  }
  return [...steps.values()];
}

function describe(e) {
  const skip = new Set(['seq', 'at', 'step', 'kind']);
  switch (e.kind) {
    case 'progress':
      return `${e.phase === 'eval' ? 'eval ' : ''}step ${e.train_step}/${e.total_steps} · loss ${fmtNum(e.phase === 'eval' ? e.eval_loss : e.loss, 4)}`;
    case 'log':
      return e.message || '';
    case 'failed':
      return e.error || '';
    case 'waiting':
      return e.message || '';
    case 'gate':
      return (e.failures || []).join('; ');
    case 'decision':
      return `${e.approve ? 'approved' : 'rejected'} by ${e.by}${e.reason ? `: ${e.reason}` : ''}`;
    default: {
      const rest = Object.fromEntries(Object.entries(e).filter(([k]) => !skip.has(k)));
      return Object.keys(rest).length ? JSON.stringify(rest) : '';
    }
  }
}

const STEP_TONE = { running: 'warn', finished: 'ok', failed: 'bad', waiting: 'warn', gated: 'bad', rejected: 'bad', rolled_back: 'bad' };

/** How long a run is watched after a button was pressed (its driver starts in the background). */
const WATCH_MS = 20_000;

function PipelineRun({ id, navigate }) {
  const [live, setLive] = useState(true);
  const [events, setEvents] = useState([]);
  const kicked = useRef(0);
  const cursor = useRef(0); // the last event read: each poll asks for those after it
  const run = usePoll(async () => {
    const r = await api.get(`/v1/pipelines/${seg(id)}`);
    const after = cursor.current;
    const more = (await api.get(`/v1/pipelines/${seg(id)}/events?after=${after}`)).data || [];
    if (more.length) {
      cursor.current = more[more.length - 1].seq;
      setEvents((old) => [...old, ...more.filter((e) => !old.length || e.seq > old[old.length - 1].seq)]);
    }
    setLive(!PIPELINE_FINAL.has(r.status) || Date.now() - kicked.current < WATCH_MS);
    return r;
  }, live ? 3000 : 0, [id]);
  const acted = () => {
    kicked.current = Date.now();
    setLive(true);
    run.reload();
  };
  const r = run.data;
  if (!r) return html`<${Back} navigate=${navigate} tab="pipeline" />${run.error ? html`<${ErrorBox} error=${run.error} testid="runs-error" />` : html`<${Loading} />`}`;
  const steps = stepsOf(events);
  return html`<${Back} navigate=${navigate} tab="pipeline" />
  <article data-testid="runs-pipeline-detail">
    <header><strong>${t('runs.prun', { id: r.id })}</strong> <${StatusBadge} status=${r.status} testid="runs-prun-status" /></header>
    <${ErrorBox} error=${run.error} testid="runs-error" />
    <dl style=${FACTS}>
      <dt>${t('runs.pipeline')}</dt><dd>${r.pipeline}</dd>
      <dt>${t('runs.step')}</dt><dd>${r.step || '—'}</dd>
      <dt>${t('runs.actor')}</dt><dd>${r.actor}</dd>
      <dt>${t('runs.created')}</dt><dd>${fmtTime(r.created)}</dd>
      <dt>${t('runs.updated')}</dt><dd>${fmtTime(r.updated)}</dd>
      ${r.error && html`<dt>${t('runs.error')}</dt><dd class="error" data-testid="runs-prun-error">${r.error}</dd>`}
    </dl>
    ${r.status === 'waiting' && r.waiting && html`<p class="notice" data-testid="runs-prun-waiting">${t('runs.waiting_msg', { message: r.waiting.message || r.waiting.step || '' })}</p>`}
    <${PipelineActions} run=${r} onDone=${acted} />
    <h4>${t('runs.steps')}</h4>
    ${steps.length === 0 ? html`<${Empty} text=${t('runs.no_steps')} />` : html`<div class="table-wrap"><table class="striped" data-testid="runs-steps">
      <thead><tr><th>${t('runs.step_name')}</th><th>${t('runs.step_type')}</th><th>${t('runs.step_state')}</th><th>${t('runs.attempts')}</th>
        <th>${t('runs.duration')}</th><th>${t('runs.progress')}</th></tr></thead>
      <tbody>${steps.map((s) => html`<tr key=${s.name} data-testid=${`runs-step-${s.name}`}>
        <th scope="row">${s.name}</th><td>${s.type || '—'}</td>
        <td><${Badge} text=${s.state ? t(`runs.state.${s.state}`) : '—'} tone=${STEP_TONE[s.state] || 'muted'} testid=${`runs-step-state-${s.name}`} /></td>
        <td data-testid=${`runs-step-attempts-${s.name}`}>${s.attempts}</td>
        <td>${s.seconds === null ? '—' : fmtMs(s.seconds * 1000)}</td>
        <td>${s.progress ? t('runs.progress_line', { step: s.progress.train_step, total: s.progress.total_steps, loss: fmtNum(s.progress.loss, 4) }) : '—'}</td>
      </tr>`)}</tbody></table></div>
      ${steps.map((s) => html`<details key=${s.name} data-testid=${`runs-step-log-${s.name}`}><summary>${s.name} · ${t('runs.log')} (${s.events.length})</summary>
        <pre style=${TEXT}>${s.events.filter((e) => e.kind !== 'progress' || e === s.progress).map((e) => `${fmtTime(e.at)}  ${e.kind}  ${describe(e)}`).join('\n')}</pre>
        ${r.outputs && r.outputs[s.name] !== undefined && html`<${Json} value=${r.outputs[s.name]} label=${t('runs.output')} />`}
      </details>`)}`}
    <details data-testid="runs-pipeline-events"><summary>${t('runs.all_events', { n: events.length })}</summary>
      <pre style=${TEXT}>${events.map((e) => `${e.seq}  ${fmtTime(e.at)}  [${e.step || '-'}] ${e.kind}  ${describe(e)}`).join('\n')}</pre></details>
  </article>`;
}

function PipelineActions({ run, onDone }) {
  const [reason, setReason] = useState('');
  const [reasonError, setReasonError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const s = run.status;
  const canResume = can('deploy') && (s === 'interrupted' || s === 'failed');
  const canCancel = can('deploy') && ['queued', 'waiting', 'interrupted', 'failed'].includes(s);
  const canApprove = can('approve') && s === 'waiting';
  if (!canResume && !canCancel && !canApprove && !error && !done) return null;
  const act = async (action) => {
    setError(null);
    setReasonError(null);
    setDone(null);
    if ((action === 'reject' || action === 'cancel') && !reason.trim()) {
      setReasonError(t('runs.reason_required'));
      return;
    }
    const path = `/v1/pipelines/${seg(run.id)}`;
    setBusy(action);
    try {
      if (action === 'resume') await api.post(`${path}/resume`, {});
      else if (action === 'cancel') await api.post(`${path}/cancel`, { reason: reason.trim() });
      else await api.post(`${path}/approve`, { approve: action === 'approve', reason: reason.trim() });
      setDone(action);
      onDone();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
    }
  };
  const button = (action, cls = '') => html`<button type="button" class=${cls} data-testid=${`runs-${action}`} disabled=${!!busy}
    aria-busy=${busy === action} onClick=${() => act(action)}>${t(`runs.${action}`)}</button>`;
  return html`<section data-testid="runs-actions">
    ${(canCancel || canApprove) && html`<label>${t('runs.reason_label')}
      <input data-testid="runs-reason" value=${reason} onInput=${(e) => setReason(e.target.value)} aria-invalid=${reasonError ? 'true' : undefined} />
      ${reasonError && html`<small class="field-error" role="alert">${reasonError}</small>`}</label>`}
    <div class="toolbar">
      ${canApprove && button('approve')}
      ${canApprove && button('reject', 'danger')}
      ${canResume && button('resume', 'secondary')}
      ${canCancel && button('cancel', 'secondary outline')}
    </div>
    ${done && html`<p class="muted" data-testid="runs-action-done">${t('runs.done_action', { action: t(`runs.${done}`) })}</p>`}
    <${ErrorBox} error=${error} testid="runs-action-error" />
  </section>`;
}
