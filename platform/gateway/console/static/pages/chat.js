// Chat playground: talk to a deployment (or one of its adapters / aliases) or to an agent
// graph; answers stream in, and each says what made it (route and propensity, adapter and
// its registry ref, the knowledge snapshot and cited passages). Agent answers can be rated:
// the score is the reward the graph's router learns from.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, can, seg } from '../lib/api.js';
import { fmtMs, fmtNum, fmtTime, t } from '../lib/i18n.js';
import { ErrorBox, html, Json, useAsync } from '../lib/ui.js';

export const strings = {
  zh: {
    'chat.title': '对话',
    'chat.mode': '对话对象',
    'chat.mode.model': '模型部署',
    'chat.mode.agent': '智能体流程',
    'chat.target': '选择',
    'chat.target.custom': '或输入模型名(如 部署:别名)',
    'chat.none': '当前密钥看不到任何可对话的对象。',
    'chat.input': '输入问题,Ctrl+Enter 发送',
    'chat.send': '发送',
    'chat.stop': '停止',
    'chat.clear': '清空对话',
    'chat.max_tokens': '最多生成令牌数',
    'chat.temperature': '温度',
    'chat.attach': '附加图片',
    'chat.attached': '已附加:{name}',
    'chat.remove': '移除',
    'chat.image_too_big': '图片 {name} 为 {size} MB,超过 {max} MB 上限',
    'chat.not_image': '{name} 不是图片文件',
    'chat.you': '我',
    'chat.assistant': '回答',
    'chat.thinking': '正在生成…',
    'chat.trace': '这个回答是怎么来的',
    'chat.deployment': '部署',
    'chat.adapter': '适配器',
    'chat.adapter_ref': '注册表版本',
    'chat.alias': '别名',
    'chat.base_model': '基础模型',
    'chat.route': '路由决定',
    'chat.route_line': '{router}:选择 {arm}(倾向概率 {p})',
    'chat.nodes': '经过的节点',
    'chat.model_call': '模型({node})',
    'chat.tools': '工具调用',
    'chat.citations': '引用的资料',
    'chat.snapshot': '知识库版本 {version} · 快照 {snapshot}',
    'chat.usage': '令牌',
    'chat.time': '耗时',
    'chat.tokens': '输入 {prompt} · 输出 {completion}',
    'chat.timing': '首字 {ttft} · 总耗时 {total}',
    'chat.run': '运行 {id}',
    'chat.open_run': '查看完整时间线',
    'chat.waiting': '此运行正在等待人工审批。',
    'chat.open_approvals': '打开审批收件箱',
    'chat.status': '状态:{status}',
    'chat.rate': '这个回答有帮助吗?',
    'chat.rate_up': '有帮助',
    'chat.rate_down': '没帮助',
    'chat.rated': '已记录评分 {score},路由器将从中学习。',
    'chat.passage': '原文段落',
    'chat.source': '来源',
    'chat.page': '第 {page} 页',
    'chat.region': '图片区域 {region}',
    'chat.images': '图片处理',
    'chat.error_in_stream': '生成中断:',
  },
  en: {
    'chat.title': 'Chat',
    'chat.mode': 'Talk to',
    'chat.mode.model': 'a model deployment',
    'chat.mode.agent': 'an agent graph',
    'chat.target': 'Choose',
    'chat.target.custom': 'or type a model name (e.g. deployment:alias)',
    'chat.none': 'This key sees nothing to talk to.',
    'chat.input': 'Ask something; Ctrl+Enter sends',
    'chat.send': 'Send',
    'chat.stop': 'Stop',
    'chat.clear': 'Clear the conversation',
    'chat.max_tokens': 'Max tokens',
    'chat.temperature': 'Temperature',
    'chat.attach': 'Attach an image',
    'chat.attached': 'Attached: {name}',
    'chat.remove': 'Remove',
    'chat.image_too_big': 'The image {name} is {size} MB, over the {max} MB limit',
    'chat.not_image': '{name} is not an image',
    'chat.you': 'You',
    'chat.assistant': 'Answer',
    'chat.thinking': 'Writing…',
    'chat.trace': 'What made this answer',
    'chat.deployment': 'Deployment',
    'chat.adapter': 'Adapter',
    'chat.adapter_ref': 'Registry ref',
    'chat.alias': 'Alias',
    'chat.base_model': 'base model',
    'chat.route': 'Routing',
    'chat.route_line': '{router}: chose {arm} (propensity {p})',
    'chat.nodes': 'Nodes',
    'chat.model_call': 'Model ({node})',
    'chat.tools': 'Tool calls',
    'chat.citations': 'Cited sources',
    'chat.snapshot': 'knowledge version {version} · snapshot {snapshot}',
    'chat.usage': 'Tokens',
    'chat.time': 'Timing',
    'chat.tokens': 'prompt {prompt} · output {completion}',
    'chat.timing': 'first token {ttft} · total {total}',
    'chat.run': 'run {id}',
    'chat.open_run': 'Open the full timeline',
    'chat.waiting': 'This run is waiting for a person to approve it.',
    'chat.open_approvals': 'Open the approvals inbox',
    'chat.status': 'status: {status}',
    'chat.rate': 'Was this answer helpful?',
    'chat.rate_up': 'Helpful',
    'chat.rate_down': 'Not helpful',
    'chat.rated': 'Score {score} recorded; the router learns from it.',
    'chat.passage': 'Source passage',
    'chat.source': 'Source',
    'chat.page': 'page {page}',
    'chat.region': 'image region {region}',
    'chat.images': 'Images',
    'chat.error_in_stream': 'The answer broke off: ',
  },
};

const MAX_IMAGE_MB = 8;

async function loadTargets() {
  const [models, agents] = await Promise.all([
    can('inference') ? api.get('/v1/models').then((r) => r.data) : [],
    can('agents:run') ? api.get('/v1/agents').then((r) => r.data || r.graphs || []) : [],
  ]);
  return {
    models: models.filter((m) => !(m.endpoints && !m.endpoints.includes('/v1/chat/completions'))),
    agents: agents.map((g) => ({ ...g, name: typeof g === 'string' ? g : g.id || g.name })),
  };
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    if (!file.type.startsWith('image/')) return reject(new Error(t('chat.not_image', { name: file.name })));
    const mb = file.size / 1048576;
    if (mb > MAX_IMAGE_MB) {
      return reject(new Error(t('chat.image_too_big', { name: file.name, size: fmtNum(mb, 1), max: MAX_IMAGE_MB })));
    }
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, url: reader.result });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export default function Page({ args, navigate }) {
  const targets = useAsync(loadTargets, []);
  const [mode, setMode] = useState(args[0] === 'agent' || (!can('inference') && can('agents:run')) ? 'agent' : 'model');
  const [target, setTarget] = useState(args[1] || '');
  const [turns, setTurns] = useState([]);
  const [text, setText] = useState('');
  const [image, setImage] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [passage, setPassage] = useState(null);
  const [params, setParams] = useState({ max_tokens: '', temperature: '' });
  const abort = useRef(null);
  const log = useRef(null);

  useEffect(() => {
    // A walkthrough step of the Demos page hands over what to try: read once, then removed.
    let p = null;
    try {
      p = JSON.parse(sessionStorage.getItem('qingliang.prefill') || 'null');
    } catch {
      p = null;
    }
    if (!p || p.page !== 'chat') return;
    sessionStorage.removeItem('qingliang.prefill');
    if (p.mode) setMode(p.mode);
    if (p.target) setTarget(p.target);
    if (p.input) setText(p.input);
    if (p.attachment && p.attachment.url) setImage({ name: p.attachment.name, url: p.attachment.url });
  }, []);
  useEffect(() => {
    if (args[0] === 'agent' || args[0] === 'model') {
      setMode(args[0]);
      if (args[1]) setTarget(args[1]);
    }
  }, [args.join('/')]);
  useEffect(() => {
    const d = targets.data;
    if (!d || target) return;
    const first = mode === 'agent' ? d.agents[0] && d.agents[0].name : d.models[0] && d.models[0].id;
    if (first) setTarget(first);
  }, [targets.data, mode]);
  useEffect(() => {
    if (log.current) log.current.scrollTop = log.current.scrollHeight;
  }, [turns]);

  const update = (index, fn) => setTurns((all) => all.map((turn, i) => (i === index ? fn(turn) : turn)));

  const send = async (e) => {
    if (e) e.preventDefault();
    const question = text.trim();
    if (!question || !target || busy) return;
    setError(null);
    setBusy(true);
    const index = turns.length;
    const turn = { question, image, mode, target, params, answer: '', trace: { started: performance.now() }, done: false };
    setTurns([...turns, turn]);
    setText('');
    setImage(null);
    abort.current = new AbortController();
    try {
      if (mode === 'model') await streamModel(turns, turn, index, update, abort.current.signal);
      else await streamAgent(turn, index, update, abort.current.signal);
    } catch (err) {
      if (err.name !== 'AbortError') update(index, (x) => ({ ...x, error: err }));
    } finally {
      update(index, (x) => ({ ...x, done: true, trace: { ...x.trace, total: performance.now() - x.trace.started } }));
      setBusy(false);
      abort.current = null;
    }
  };

  const attach = async (file) => {
    setError(null);
    if (!file) return;
    try {
      setImage(await readImage(file));
    } catch (err) {
      setError(err);
    }
  };

  const d = targets.data || { models: [], agents: [] };
  const options = mode === 'model' ? d.models.map((m) => m.id) : d.agents.map((g) => g.name);
  return html`<h2>${t('chat.title')}</h2>
    <${ErrorBox} error=${targets.error} />
    <form class="toolbar" onSubmit=${(e) => e.preventDefault()}>
      <label>${t('chat.mode')}
        <select data-testid="chat-mode" value=${mode} onChange=${(e) => { setMode(e.target.value); setTarget(''); setTurns([]); }}>
          ${can('inference') && html`<option value="model">${t('chat.mode.model')}</option>`}
          ${can('agents:run') && html`<option value="agent">${t('chat.mode.agent')}</option>`}
        </select></label>
      <label>${t('chat.target')}
        <input list="chat-targets" data-testid="chat-target" value=${target} placeholder=${t('chat.target.custom')}
          onChange=${(e) => { setTarget(e.target.value.trim()); setTurns([]); }} />
        <datalist id="chat-targets">${options.map((o) => html`<option value=${o} />`)}</datalist></label>
      ${mode === 'model' && html`<label>${t('chat.max_tokens')}
        <input type="number" min="1" step="1" data-testid="chat-max-tokens" value=${params.max_tokens}
          onInput=${(e) => setParams({ ...params, max_tokens: e.target.value })} /></label>
      <label>${t('chat.temperature')}
        <input type="number" min="0" max="2" step="0.1" data-testid="chat-temperature" value=${params.temperature}
          onInput=${(e) => setParams({ ...params, temperature: e.target.value })} /></label>`}
      <button type="button" class="secondary outline" data-testid="chat-clear" onClick=${() => setTurns([])}>${t('chat.clear')}</button>
    </form>
    ${targets.data && options.length === 0 && html`<p class="muted" data-testid="chat-none">${t('chat.none')}</p>`}
    <div class="chat-log" ref=${log} data-testid="chat-log">
      ${turns.map((turn, i) => html`<${Turn} key=${i} turn=${turn} last=${i === turns.length - 1}
          onPassage=${setPassage} navigate=${navigate} onRated=${(r) => update(i, (x) => ({ ...x, rated: r }))} />`)}
    </div>
    <form onSubmit=${send} class="chat-input">
      <textarea rows="3" data-testid="chat-input" placeholder=${t('chat.input')} value=${text}
        onInput=${(e) => setText(e.target.value)}
        onKeyDown=${(e) => e.key === 'Enter' && (e.ctrlKey || e.metaKey) && send(e)}></textarea>
      <div class="toolbar">
        <label class="secondary">${t('chat.attach')}
          <input type="file" accept="image/*" data-testid="chat-attach" onChange=${(e) => attach(e.target.files[0])} /></label>
        ${image && html`<span data-testid="chat-attached">${t('chat.attached', { name: image.name })}
          <img src=${image.url} alt="" class="thumb" />
          <button type="button" class="secondary outline" onClick=${() => setImage(null)}>${t('chat.remove')}</button></span>`}
        <button type="submit" data-testid="chat-send" disabled=${busy || !target} aria-busy=${busy}>${t('chat.send')}</button>
        ${busy && html`<button type="button" class="secondary" data-testid="chat-stop" onClick=${() => abort.current && abort.current.abort()}>${t('chat.stop')}</button>`}
      </div>
      <${ErrorBox} error=${error} testid="chat-error" />
    </form>
    ${passage && html`<${Passage} citation=${passage} onClose=${() => setPassage(null)} />`}`;
}

/** A deployment: the conversation so far plus this question, streamed from /v1/chat/completions. */
async function streamModel(previous, turn, index, update, signal) {
  const messages = [];
  for (const p of previous.filter((x) => x.mode === 'model' && x.target === turn.target && !x.error)) {
    messages.push(userMessage(p), { role: 'assistant', content: p.answer });
  }
  messages.push(userMessage(turn));
  const body = { model: turn.target, messages, stream: true, stream_options: { include_usage: true } };
  // Empty means the deployment's default; the server checks the values and names a bad one.
  if (turn.params.max_tokens !== '') body.max_tokens = Number(turn.params.max_tokens);
  if (turn.params.temperature !== '') body.temperature = Number(turn.params.temperature);
  await api.stream('/v1/chat/completions', body, (event) => {
    update(index, (x) => {
      const trace = { ...x.trace };
      if (event.qingliang) trace.qingliang = event.qingliang;
      if (event.usage) trace.usage = event.usage;
      const delta = (event.choices || []).map((c) => (c.delta && c.delta.content) || '').join('');
      if (delta && trace.ttft === undefined) trace.ttft = performance.now() - trace.started;
      const finish = (event.choices || []).map((c) => c.finish_reason).find(Boolean);
      if (finish) trace.finish = finish;
      return { ...x, answer: x.answer + delta, trace };
    });
  }, { signal });
}

function userMessage(turn) {
  if (!turn.image) return { role: 'user', content: turn.question };
  return {
    role: 'user',
    content: [
      { type: 'text', text: turn.question },
      { type: 'image_url', image_url: { url: turn.image.url } },
    ],
  };
}

/** An agent graph: one run, its events streamed from /v1/agents/{graph}/runs. */
async function streamAgent(turn, index, update, signal) {
  const body = { input: turn.question, stream: true };
  if (turn.image) body.attachments = [{ name: turn.image.name, data: turn.image.url.split(',', 2)[1] }];
  await api.stream(`/v1/agents/${seg(turn.target)}/runs`, body, (event) => {
    update(index, (x) => agentEvent(x, event));
  }, { signal });
}

function agentEvent(turn, event) {
  const trace = { ...turn.trace };
  const add = (key, value) => (trace[key] = [...(trace[key] || []), value]);
  let answer = turn.answer;
  switch (event.type) {
    case 'run':
      trace.run_id = event.run_id;
      break;
    case 'node':
      add('nodes', event.agent || event.tool || event.graph ? `${event.node} (${event.agent || event.tool || event.graph})` : event.node);
      break;
    case 'route':
      add('routes', event);
      break;
    case 'tool':
      add('tools', event);
      break;
    case 'model':
      add('models', event);
      break;
    case 'citations':
      trace.citations = [...(trace.citations || []), ...(event.citations || [])];
      break;
    case 'token':
      if (event.node !== trace.answerNode) {
        trace.answerNode = event.node;
        answer = '';
      }
      if (trace.ttft === undefined) trace.ttft = performance.now() - trace.started;
      answer += event.delta || '';
      break;
    case 'approval':
      trace.approval = event;
      break;
    case 'status':
      trace.status = event.status;
      if (event.reason) trace.reason = event.reason;
      if (typeof event.answer === 'string' && event.answer) answer = event.answer;
      break;
    default:
      add('other', event);
  }
  return { ...turn, answer, trace };
}

function Turn({ turn, last, onPassage, navigate, onRated }) {
  return html`<div class="msg user" data-testid="chat-msg-user">${turn.question}
      ${turn.image && html`<img class="attached" src=${turn.image.url} alt=${turn.image.name} />`}</div>
    <div class="msg assistant" data-testid=${last ? 'chat-last' : 'chat-msg-assistant'}>
      <div data-testid="chat-answer" aria-busy=${!turn.done && !turn.answer}>${turn.answer || (!turn.done ? t('chat.thinking') : '')}</div>
      ${turn.error && html`<${ErrorBox} error=${turn.error} testid="chat-answer-error" />`}
      <${Trace} turn=${turn} onPassage=${onPassage} navigate=${navigate} />
      ${turn.done && turn.trace.run_id && ['done', 'rejected'].includes(turn.trace.status) && html`<${Rate} turn=${turn} onRated=${onRated} />`}
    </div>`;
}

function Trace({ turn, onPassage, navigate }) {
  const tr = turn.trace;
  const q = tr.qingliang || {};
  const rows = [];
  const row = (label, value, testid) => rows.push(html`<dt>${label}</dt><dd data-testid=${testid}>${value}</dd>`);
  if (q.deployment) row(t('chat.deployment'), q.deployment, 'chat-trace-deployment');
  if (turn.mode === 'model') row(t('chat.adapter'), q.adapter || t('chat.base_model'), 'chat-trace-adapter');
  if (q.adapter_ref) row(t('chat.adapter_ref'), q.adapter_ref, 'chat-trace-ref');
  if (q.alias !== undefined && q.alias !== null) row(t('chat.alias'), q.alias || '""', 'chat-trace-alias');
  if (q.images) row(t('chat.images'), html`<${Json} value=${q.images} />`, 'chat-trace-images');
  if (tr.run_id) {
    row(t('chat.run', { id: '' }), html`<a href=${`#/runs/agent/${encodeURIComponent(tr.run_id)}`} data-testid="chat-run-link">${tr.run_id}</a>`, 'chat-trace-run');
  }
  for (const r of tr.routes || []) {
    row(t('chat.route'), t('chat.route_line', { router: r.router || r.node, arm: r.arm, p: fmtNum(r.propensity, 3) }), 'chat-trace-route');
  }
  if (tr.nodes) row(t('chat.nodes'), tr.nodes.join(' → '), 'chat-trace-nodes');
  for (const m of tr.models || []) {
    const served = m.adapter ? `${m.adapter}${m.adapter_ref ? ` (${m.adapter_ref})` : ''}` : t('chat.base_model');
    row(t('chat.model_call', { node: m.node }), `${m.model} → ${served}`, 'chat-trace-model');
  }
  for (const call of tr.tools || []) {
    row(t('chat.tools'), html`<details><summary>${call.tool} ${call.error ? '⚠' : ''}</summary>
      <${Json} value=${{ arguments: call.arguments, result: call.result, error: call.error }} /></details>`, 'chat-trace-tool');
  }
  if (tr.status) row(t('common.status'), tr.status + (tr.reason ? ` — ${tr.reason}` : ''), 'chat-trace-status');
  if (tr.usage) row(t('chat.usage'), t('chat.tokens', { prompt: tr.usage.prompt_tokens, completion: tr.usage.completion_tokens }), 'chat-trace-usage');
  if (turn.done && tr.ttft !== undefined) row(t('chat.time'), t('chat.timing', { ttft: fmtMs(tr.ttft), total: fmtMs(tr.total) }), 'chat-trace-timing');
  const cites = tr.citations || [];
  return html`<div class="trace">
    ${tr.status === 'waiting' && html`<p class="notice" data-testid="chat-waiting">${t('chat.waiting')}
      <a href="#/approvals" onClick=${(e) => { e.preventDefault(); navigate('approvals'); }}>${t('chat.open_approvals')}</a></p>`}
    ${rows.length > 0 && html`<details open=${turn.mode === 'agent'} data-testid="chat-trace"><summary>${t('chat.trace')}</summary><dl>${rows}</dl></details>`}
    ${cites.length > 0 && html`<div><strong>${t('chat.citations')}</strong><ol>${cites.map(
      (c, i) => html`<li key=${i}><a href="#" data-testid="chat-citation" onClick=${(e) => { e.preventDefault(); onPassage(c); }}>
        ${c.record ? `${c.record} ` : ''}${c.title || c.source || c.doc_id}${c.page ? ` · ${t('chat.page', { page: c.page })}` : ''}</a>
        <small class="muted"> · ${fmtNum(c.score, 3)}${c.version !== undefined && c.version !== null ? ` · ${t('chat.snapshot', { version: c.version, snapshot: fmtTime(c.snapshot) })}` : ''}</small></li>`,
    )}</ol></div>`}
  </div>`;
}

function Rate({ turn, onRated }) {
  const [error, setError] = useState(null);
  const rate = async (score) => {
    setError(null);
    try {
      await api.post('/v1/feedback', { run_id: turn.trace.run_id, score });
      onRated(score);
    } catch (err) {
      setError(err);
    }
  };
  if (turn.rated !== undefined) return html`<p class="muted" data-testid="chat-rated">${t('chat.rated', { score: turn.rated })}</p>`;
  return html`<div class="rate">${t('chat.rate')}
    <button type="button" class="outline" data-testid="chat-rate-up" onClick=${() => rate(1)}>${t('chat.rate_up')}</button>
    <button type="button" class="outline secondary" data-testid="chat-rate-down" onClick=${() => rate(-1)}>${t('chat.rate_down')}</button>
    <${ErrorBox} error=${error} /></div>`;
}

function Passage({ citation, onClose }) {
  const c = citation;
  return html`<dialog open data-testid="chat-passage"><article>
    <header><strong>${t('chat.passage')}</strong></header>
    <p><small class="muted">${t('chat.source')}: ${c.source || c.doc_id}${c.page ? ` · ${t('chat.page', { page: c.page })}` : ''}
      ${c.region ? ` · ${t('chat.region', { region: c.region.join(', ') })}` : ''}
      ${c.heading_path && c.heading_path.length ? ` · ${c.heading_path.join(' › ')}` : ''}</small></p>
    <blockquote data-testid="chat-passage-text">${c.context || c.text}</blockquote>
    <footer><button type="button" data-testid="chat-passage-close" onClick=${onClose}>${t('common.close')}</button></footer>
  </article></dialog>`;
}
