// Demos (admin only): the three domain demonstrations and the front desk that routes between
// them — start (`demo up`, with its train / approve options) and stop (`demo down`, after a
// confirmation) as jobs, whose output refreshes while they run; links to try each one in the
// chat and approvals pages. A demo that is up lists its walkthrough (the bundle's README) as
// numbered steps, each with a button that opens its page filled in: a search with its query
// run, the chat with the request typed and the bundle's sample picture attached (fetched
// from the gateway with the user's key), the approvals, router, pipeline or deployment page.
import { html, usePoll, ErrorBox, Loading, Empty, Badge, StatusBadge, Confirm } from '../lib/ui.js';
import { api, ApiError, seg, session } from '../lib/api.js';
import { t, fmtTime, fmtNum } from '../lib/i18n.js';
import { useEffect, useRef, useState } from 'preact/hooks';

export const strings = {
  zh: {
    'demos.title': '领域演示',
    'demos.intro': '三个领域演示（政务、医疗、制造）各自部署知识库、智能体流程和（可选）训练好的领域适配器；三个都启动后，总服务台会用学习型路由器把请求分到对应领域。启动和停止在后台运行，下面会实时显示输出。',
    'demos.state_up': '已启动',
    'demos.state_down': '未启动',
    'demos.state_partial': '部分启动',
    'demos.train': '训练领域适配器',
    'demos.train_hint': '运行该领域的训练流水线（数据治理 → LoRA 微调 → 与基础模型对比评测 → 审批 → 灰度 10% → 正式发布）。在 CPU 上每个领域需要几分钟；不勾选时各服务台直接用基础模型回答。',
    'demos.approve': '由我直接审批训练结果',
    'demos.approve_hint': '训练流水线有两道人工审批（上线灰度前、正式发布前）。勾选后由你当场批准，记录在你名下；不勾选时流水线会停在审批处，等人在“审批”页处理。需要先勾选训练。',
    'demos.options': '启动选项和停止分别做什么？',
    'demos.start': '启动',
    'demos.stop': '停止',
    'demos.stop_title': '停止演示 {name}?',
    'demos.stop_body': '将删除该演示创建的智能体流程、知识库、数据集以及领域适配器和别名，进行中的训练会被取消。你自己创建的对象不会被动。',
    'demos.stop_ok': '确认停止',
    'demos.job': '最近一次任务',
    'demos.action_up': '启动',
    'demos.action_down': '停止',
    'demos.job_line': '{action} · 开始于 {start}',
    'demos.job_ended': '结束于 {end}（用时 {secs} 秒）',
    'demos.job_running': '进行中，已用 {secs} 秒 · 每 2 秒刷新',
    'demos.job_failed': '任务失败（退出码 {code}），输出如下：',
    'demos.with_train': '含训练',
    'demos.with_approve': '直接审批',
    'demos.log': '输出',
    'demos.no_log': '（暂无输出）',
    'demos.busy': '任务进行中，完成前不能再启动或停止。',
    'demos.try': '去试用',
    'demos.try_chat': '在对话页试用 {graph}',
    'demos.try_approvals': '查看待审批',
    'demos.try_after': '启动后可在对话页试用。',
    'demos.front_desk': '总服务台（三个领域一起）',
    'demos.front_summary': '一个入口接待所有请求：学习型路由器按内容把请求分给政务、医疗或制造服务台。启动它会依次启动三个领域演示；停止会把三个都停下。',
    'demos.none': '没有找到演示包（deploy/domains）。',
    'demos.steps': '按步骤演练',
    'demos.steps_hint': '每一步的“试一试”会打开对应页面并填好内容；看到的结果应与说明一致。',
    'demos.steps_after': '启动后，这里会列出演练步骤。',
    'demos.step_go': '试一试',
    'demos.step_expect': '应当看到：',
    'demos.step_attach': '附带示例图片 {file}',
    'demos.step_image': '用示例图片 {file} 检索',
    'demos.kind.search': '检索',
    'demos.kind.agent': '对话',
    'demos.kind.approvals': '审批',
    'demos.kind.router': '路由器',
    'demos.kind.pipeline': '流水线',
    'demos.kind.deployment': '部署',
    'demos.self_approval': '发起运行的密钥不能批准自己发起的运行：请退出，用另一个密钥登录后再批准。用管理员密钥发起的运行不属于任何租户，只有管理员密钥能在审批页看到它，所以这里要用第二个管理员（admin）密钥；只带“审批”（approve）权限的密钥处理的是它所属租户的运行。',
    'demos.keys_link': '在“密钥”页创建第二个密钥',
  },
  en: {
    'demos.title': 'Domain demonstrations',
    'demos.intro': 'Each of the three domain demonstrations (government services, healthcare, manufacturing) deploys its knowledge bases, agent graphs and, optionally, a trained domain adapter; with all three up, the front desk routes requests to the right domain with a learned router. Starting and stopping run in the background; their output shows below as it comes.',
    'demos.state_up': 'up',
    'demos.state_down': 'down',
    'demos.state_partial': 'partly up',
    'demos.train': 'Train the domain adapter',
    'demos.train_hint': 'Runs the domain\'s training pipeline (data governance → LoRA fine-tune → evaluation against the base model → approval → 10 % canary → release). Minutes per domain on a CPU; unticked, the desks answer with the base model.',
    'demos.approve': 'Approve the training results myself',
    'demos.approve_hint': 'The training pipeline has two human gates (before the canary, before the release). Ticked, you approve them as it goes, recorded as yours; unticked, each run waits at its gate for someone on the Approvals page. Needs training ticked.',
    'demos.options': 'What the start options and stop do',
    'demos.start': 'Start',
    'demos.stop': 'Stop',
    'demos.stop_title': 'Stop demonstration {name}?',
    'demos.stop_body': 'Removes the agent graphs, knowledge bases, datasets, domain adapters and aliases the demonstration created; training still running is cancelled. Objects you made yourself are not touched.',
    'demos.stop_ok': 'Stop it',
    'demos.job': 'Latest job',
    'demos.action_up': 'start',
    'demos.action_down': 'stop',
    'demos.job_line': '{action} · started {start}',
    'demos.job_ended': 'ended {end} (took {secs} s)',
    'demos.job_running': 'running for {secs} s · refreshes every 2 s',
    'demos.job_failed': 'The job failed (exit code {code}); its output:',
    'demos.with_train': 'with training',
    'demos.with_approve': 'approved by me',
    'demos.log': 'Output',
    'demos.no_log': '(no output yet)',
    'demos.busy': 'A job is running; wait for it to end before starting or stopping again.',
    'demos.try': 'Try it',
    'demos.try_chat': 'Try {graph} in Chat',
    'demos.try_approvals': 'Open the approvals',
    'demos.try_after': 'Once it is up, try it in Chat.',
    'demos.front_desk': 'Front desk (all three domains)',
    'demos.front_summary': 'One entrance for every request: a learned router sends each to the government, healthcare or manufacturing desk by what it asks. Starting it starts the three domain demonstrations in turn; stopping it stops all three.',
    'demos.none': 'No demonstration bundle found (deploy/domains).',
    'demos.steps': 'Walkthrough, step by step',
    'demos.steps_hint': 'Each step\'s “Try it” opens its page filled in; what you see should match its description.',
    'demos.steps_after': 'Once it is up, its walkthrough steps are listed here.',
    'demos.step_go': 'Try it',
    'demos.step_expect': 'You should see: ',
    'demos.step_attach': 'with the sample picture {file}',
    'demos.step_image': 'searching with the sample picture {file}',
    'demos.kind.search': 'search',
    'demos.kind.agent': 'chat',
    'demos.kind.approvals': 'approval',
    'demos.kind.router': 'router',
    'demos.kind.pipeline': 'pipeline',
    'demos.kind.deployment': 'deployment',
    'demos.self_approval': 'The key that started a run may not approve it: sign out and sign in with another key, then approve. A run started with the admin key belongs to no tenant and only admin keys see it in the approvals, so use a second admin key here; a key with just the approve scope decides the runs of its own tenant.',
    'demos.keys_link': 'Create a second key on the Keys page',
  },
};

const CSS = `
.demo-card header { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; justify-content: space-between; }
.demo-card .opts label { margin-bottom: .1rem; }
.demo-opts dd { margin: 0 0 .6rem 1rem; color: var(--pico-muted-color); }
.demo-card pre.demo-log { max-height: 16rem; overflow: auto; font-size: .78rem; white-space: pre-wrap; word-break: break-word; }
.demo-card .actions { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: .75rem; }
.demo-card .actions button { width: auto; margin: 0; }
.demo-links { display: flex; flex-wrap: wrap; gap: .25rem 1rem; }
.demo-steps li { margin-bottom: .6rem; }
.demo-steps .step-head { display: flex; flex-wrap: wrap; gap: .25rem .5rem; align-items: center; }
.demo-steps .step-head button { width: auto; margin: 0 0 0 auto; padding: .2rem .7rem; }
.demo-steps small { display: block; }
`;

const FRONT = 'front-desk';
const RUNNING = (job) => job && job.status === 'running';
const secs = (job) => Math.round(((job.ended_at || Date.now() / 1000) - job.started_at) || 0);

function JobPanel({ name, job }) {
  const log = useRef(null);
  useEffect(() => {
    if (log.current) log.current.scrollTop = log.current.scrollHeight;
  }, [job && job.log_tail && job.log_tail.length, job && job.status]);
  if (!job) return null;
  const flags = [job.train && t('demos.with_train'), job.approve && t('demos.with_approve')].filter(Boolean);
  return html`<section data-testid=${`demos-job-${name}`}>
    <p><strong>${t('demos.job')}</strong> <${StatusBadge} status=${job.status} testid=${`demos-job-status-${name}`} />
      <br /><small class="muted">${t('demos.job_line', { action: t(`demos.action_${job.action}`), start: fmtTime(job.started_at) })}
      ${flags.length ? ` · ${flags.join(' · ')}` : ''} ·
      ${RUNNING(job) ? t('demos.job_running', { secs: fmtNum(secs(job)) }) : t('demos.job_ended', { end: fmtTime(job.ended_at), secs: fmtNum(secs(job)) })}</small></p>
    ${job.status === 'failed' && html`<p class="error" data-testid=${`demos-job-error-${name}`}>${t('demos.job_failed', { code: job.returncode ?? '—' })}</p>`}
    <details open=${RUNNING(job) || job.status === 'failed'}><summary>${t('demos.log')}</summary>
      <pre class="demo-log" ref=${log} data-testid=${`demos-log-${name}`}>${(job.log_tail || []).join('\n') || t('demos.no_log')}</pre></details>
  </section>`;
}

/** What a walkthrough step hands to the page it opens (read and removed there on mount). */
const PREFILL = 'qingliang.prefill';

/** A sample picture of demo `name`, fetched with the user's key, as {name, url (data URL)}. */
async function samplePicture(name, file) {
  const path = `/v1/demos/${seg(name)}/samples/${seg(file)}`;
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${session.key}` } });
  } catch (e) {
    throw new ApiError(0, `GET ${path}: ${e.message}`);
  }
  if (!response.ok) {
    let message = `GET ${path}: HTTP ${response.status}`;
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || message;
    } catch {
      /* keep the status line */
    }
    throw new ApiError(response.status, message);
  }
  const blob = await response.blob();
  const url = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  return { name: file, url };
}

/** Open the page of `step` of demo `name`, filled in. */
async function openStep(name, step, navigate) {
  const hand = (value) => sessionStorage.setItem(PREFILL, JSON.stringify(value));
  switch (step.kind) {
    case 'search': {
      const image = step.image ? await samplePicture(name, step.image) : null;
      hand({ page: 'knowledge', kb: step.kb, query: step.query || '', image, limit: step.limit });
      return navigate('knowledge', step.kb, 'search');
    }
    case 'agent': {
      const attachment = step.attachment ? await samplePicture(name, step.attachment) : null;
      hand({ page: 'chat', mode: 'agent', target: step.graph, input: step.input, attachment });
      return navigate('chat', 'agent', step.graph);
    }
    case 'router':
      return navigate('router', step.graph);
    case 'pipeline':
      return navigate('runs', 'pipeline');
    case 'deployment':
      return navigate('deployments', step.deployment);
    default:
      return navigate('approvals');
  }
}

function Steps({ demo, navigate }) {
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const steps = demo.steps || [];
  if (!steps.length) return null;
  if (demo.state !== 'up') return html`<p class="muted"><small data-testid=${`demos-steps-after-${demo.name}`}>${t('demos.steps_after')}</small></p>`;
  const go = async (i, step) => {
    setBusy(i);
    setError(null);
    try {
      await openStep(demo.name, step, navigate);
    } catch (e) {
      setError(e);
      setBusy(null);
    }
  };
  return html`<details open class="demo-steps" data-testid=${`demos-walkthrough-${demo.name}`}>
    <summary><strong>${t('demos.steps')}</strong></summary>
    <p class="muted"><small>${t('demos.steps_hint')}</small></p>
    <${ErrorBox} error=${error} testid=${`demos-step-error-${demo.name}`} />
    <ol data-testid=${`demos-steps-${demo.name}`}>${steps.map((step, i) => html`<li key=${i} data-testid=${`demos-step-${demo.name}-${i + 1}`} data-kind=${step.kind}>
      <div class="step-head"><${Badge} tone="info" text=${t(`demos.kind.${step.kind}`)} /> <span>${step.title}</span>
        <button type="button" class="outline" data-testid=${`demos-step-go-${demo.name}-${i + 1}`} aria-busy=${busy === i}
          disabled=${busy !== null} onClick=${() => go(i, step)}>${t('demos.step_go')}</button></div>
      ${(step.input || step.query) && html`<small><q>${step.input || step.query}</q></small>`}
      ${step.attachment && html`<small class="muted">${t('demos.step_attach', { file: step.attachment })}</small>`}
      ${step.image && html`<small class="muted">${t('demos.step_image', { file: step.image })}</small>`}
      ${step.expect && html`<small class="muted">${t('demos.step_expect')}${step.expect}</small>`}
      ${step.kind === 'approvals' && html`<small class="notice" data-testid=${`demos-self-approval-${demo.name}`}>${t('demos.self_approval')}
        <a href="#/keys" data-testid="demos-keys-link" onClick=${(e) => { e.preventDefault(); navigate('keys'); }}>${t('demos.keys_link')}</a></small>`}
    </li>`)}</ol>
  </details>`;
}

function DemoCard({ demo, graphs, busyAll, onChanged, navigate }) {
  const [train, setTrain] = useState(false);
  const [approve, setApprove] = useState(false);
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState(null);
  const [sending, setSending] = useState(false);
  const busy = RUNNING(demo.job) || busyAll || sending;
  const target = demo.name === FRONT ? 'all' : demo.name;
  const send = async (action) => {
    setSending(true);
    setError(null);
    try {
      await api.post(`/v1/demos/${seg(target)}/${action}`, action === 'up' ? { train, approve: train && approve } : {});
      onChanged();
    } catch (e) {
      setError(e);
    } finally {
      setSending(false);
    }
  };
  const tone = { up: 'ok', down: 'muted', partial: 'warn' }[demo.state] || 'muted';
  return html`<article class="demo-card" data-testid=${`demos-card-${demo.name}`}>
    <header><strong>${demo.title}</strong>
      <${Badge} tone=${tone} text=${t(`demos.state_${demo.state}`)} testid=${`demos-state-${demo.name}`} /></header>
    <p>${demo.summary}</p>
    <div class="opts">
      <label><input type="checkbox" data-testid=${`demos-train-${demo.name}`} checked=${train} disabled=${busy}
        onChange=${(e) => { setTrain(e.target.checked); if (!e.target.checked) setApprove(false); }} /> ${t('demos.train')}</label>
      <label><input type="checkbox" data-testid=${`demos-approve-${demo.name}`} checked=${approve} disabled=${busy || !train}
        onChange=${(e) => setApprove(e.target.checked)} /> ${t('demos.approve')}</label>
    </div>
    <div class="actions">
      <button type="button" data-testid=${`demos-start-${demo.name}`} disabled=${busy} aria-busy=${sending}
        onClick=${() => send('up')}>${t('demos.start')}</button>
      <button type="button" class="secondary" data-testid=${`demos-stop-${demo.name}`} disabled=${busy}
        onClick=${() => setAsking(true)}>${t('demos.stop')}</button>
    </div>
    ${busy && !sending && html`<p class="muted"><small data-testid=${`demos-busy-${demo.name}`}>${t('demos.busy')}</small></p>`}
    <${ErrorBox} error=${error} testid=${`demos-error-${demo.name}`} />
    <${Confirm} open=${asking} title=${t('demos.stop_title', { name: demo.title })} danger=${true} confirmLabel=${t('demos.stop_ok')}
      onClose=${(ok) => { setAsking(false); if (ok) send('down'); }}><p>${t('demos.stop_body')}</p><//>
    <${JobPanel} name=${demo.name} job=${demo.job} />
    <${Steps} demo=${demo} navigate=${navigate} />
    <footer><strong>${t('demos.try')}</strong>
      <div class="demo-links">${graphs.length
        ? graphs.map((g) => html`<a href=${`#/chat/agent/${seg(g)}`} data-testid=${`demos-try-${demo.name}-${g}`}
            onClick=${(e) => { e.preventDefault(); navigate('chat', 'agent', g); }}>${t('demos.try_chat', { graph: g })}</a>`)
        : html`<span class="muted">${t('demos.try_after')}</span>`}
        <a href="#/approvals" data-testid=${`demos-approvals-${demo.name}`}
          onClick=${(e) => { e.preventDefault(); navigate('approvals'); }}>${t('demos.try_approvals')}</a></div></footer>
  </article>`;
}

/** The front desk: up when all three are; its job is the newest one that ran all three. */
function frontDesk(list) {
  const names = list.map((d) => d.name);
  const jobs = list.map((d) => d.job).filter((j) => j && names.every((n) => (j.demos || []).includes(n)));
  jobs.sort((a, b) => a.started_at - b.started_at);
  const up = list.filter((d) => d.state === 'up').length;
  return {
    name: FRONT,
    title: t('demos.front_desk'),
    summary: t('demos.front_summary'),
    state: up === list.length ? 'up' : up ? 'partial' : 'down',
    job: jobs.length ? jobs[jobs.length - 1] : null,
  };
}

export default function Page({ navigate }) {
  const [fast, setFast] = useState(false);
  const state = usePoll(() => api.get('/v1/demos'), fast ? 2000 : 10000, []);
  const agents = usePoll(() => api.get('/v1/agents'), fast ? 5000 : 15000, []);
  const list = (state.data && state.data.data) || [];
  const anyRunning = list.some((d) => RUNNING(d.job));
  useEffect(() => setFast(anyRunning), [anyRunning]);
  const graphs = (agents.data && agents.data.data) || [];
  const graphsOf = (name) =>
    name === FRONT
      ? graphs.filter((g) => g.id === FRONT).map((g) => g.id)
      : graphs.filter((g) => (g.labels || {}).domain === name).map((g) => g.id);
  const cards = list.length ? [...list, frontDesk(list)] : [];
  const busyAll = (name) => (name === FRONT ? anyRunning : false);
  const refresh = () => {
    setFast(true);
    state.reload();
  };
  return html`<style>${CSS}</style>
    <h2>${t('demos.title')}</h2>
    <p class="muted">${t('demos.intro')}</p>
    <details open class="demo-opts" data-testid="demos-options-help"><summary>${t('demos.options')}</summary><dl>
      <dt>${t('demos.train')}</dt><dd>${t('demos.train_hint')}</dd>
      <dt>${t('demos.approve')}</dt><dd>${t('demos.approve_hint')}</dd>
      <dt>${t('demos.stop')}</dt><dd>${t('demos.stop_body')}</dd></dl></details>
    <${ErrorBox} error=${state.error} testid="demos-list-error" />
    <${ErrorBox} error=${agents.error} testid="demos-agents-error" />
    <${Loading} when=${!state.data && state.loading} />
    ${state.data && !list.length && html`<${Empty} text=${t('demos.none')} />`}
    <div class="grid-even" data-testid="demos-list">${cards.map(
      (d) => html`<${DemoCard} key=${d.name} demo=${d} graphs=${graphsOf(d.name)} busyAll=${busyAll(d.name)}
        onChanged=${refresh} navigate=${navigate} />`,
    )}</div>`;
}
