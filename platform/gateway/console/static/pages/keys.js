// API keys (admin only): every key with its scopes, tenant and dates; a form that makes a
// key as `qingliang keys create` does and shows its secret once; revoke after a
// confirmation. The server checks everything and its refusals are shown as it words them.
import { html, useAsync, ErrorBox, Loading, Empty, Badge, Confirm } from '../lib/ui.js';
import { api, seg, session } from '../lib/api.js';
import { t, fmtTime } from '../lib/i18n.js';
import { useEffect, useRef, useState } from 'preact/hooks';

export const strings = {
  zh: {
    'keys.title': 'API 密钥',
    'keys.intro': '每个使用平台的人或程序都应有自己的密钥，只带所需的权限。比如审批：发起运行的密钥不能批准自己的运行，请给审批人单独建一个带“审批（approve）”权限的密钥。',
    'keys.list': '全部密钥',
    'keys.col_name': '名称',
    'keys.col_prefix': '密钥编号',
    'keys.col_scopes': '权限',
    'keys.col_tenant': '租户',
    'keys.col_created': '创建于',
    'keys.col_expires': '过期',
    'keys.col_used': '最近使用',
    'keys.col_state': '状态',
    'keys.never': '永不过期',
    'keys.not_used': '从未使用',
    'keys.all_tenants': '全部租户',
    'keys.active': '有效',
    'keys.revoked_at': '已撤销 {time}',
    'keys.current': '当前登录所用',
    'keys.revoke': '撤销',
    'keys.revoke_title': '撤销密钥 {name}？',
    'keys.revoke_body': '撤销后，使用密钥 {prefix} 的请求会立即被拒绝（401），且无法恢复；如仍需要，请新建一个密钥。',
    'keys.revoke_ok': '确认撤销',
    'keys.revoked_done': '已撤销密钥 {name}。',
    'keys.none': '还没有密钥。',
    'keys.create': '新建密钥',
    'keys.name': '名称',
    'keys.name_hint': '用来认出这个密钥，例如 nurse-approver。可用 1-64 个字母、数字、“.”、“_”或“-”，有效密钥中不能重名。',
    'keys.scopes': '权限（可多选）',
    'keys.tenant': '租户（可不填）',
    'keys.tenant_hint': '只为这个租户办事，只能看到该租户的知识库和运行；不填则为租户 default。管理员密钥面向全部租户，不能填租户。',
    'keys.expiry': '有效期',
    'keys.expiry_hint': '密钥不会自动过期；不再需要时，请在下方列表中撤销。',
    'keys.submit': '创建密钥',
    'keys.secret_title': '新密钥 {name} 已创建',
    'keys.secret_warn': '请现在复制并妥善保存：密钥只显示这一次，关闭后无法再次查看（平台只保存它的摘要）。',
    'keys.copy': '复制',
    'keys.copied': '已复制到剪贴板',
    'keys.copy_failed': '无法自动复制，请选中上面的密钥手动复制。',
    'keys.secret_done': '我已保存，关闭',
    'keys.scope_admin': '管理员（admin）：可调用全部接口、面向全部租户（包括管理密钥和演示）',
    'keys.scope_deploy': '部署（deploy）：启动、查看、取消、恢复训练和发布流水线；不能绑定租户',
    'keys.scope_inference': '推理（inference）：对话、文本补全、向量、模型列表',
    'keys.scope_knowledge_read': '读知识库（knowledge:read）：查看、检索知识库及其文档、快照和已学答案',
    'keys.scope_knowledge_write': '写知识库（knowledge:write）：上传、删除、同步、快照、回滚，添加和撤回已学答案',
    'keys.scope_agents_run': '运行智能体（agents:run）：发起和查看智能体运行，提交反馈',
    'keys.scope_approve': '审批（approve）：处理待审批的智能体运行和流水线（批准、修改后批准、驳回），但不能批准自己发起的运行',
  },
  en: {
    'keys.title': 'API keys',
    'keys.intro': 'Everyone (and every program) using the platform should have a key of their own with only the scopes they need. Approvals, for one: the key that started a run may not approve it, so give the approver a separate key with the approve scope.',
    'keys.list': 'All keys',
    'keys.col_name': 'Name',
    'keys.col_prefix': 'Key id',
    'keys.col_scopes': 'Scopes',
    'keys.col_tenant': 'Tenant',
    'keys.col_created': 'Created',
    'keys.col_expires': 'Expires',
    'keys.col_used': 'Last used',
    'keys.col_state': 'State',
    'keys.never': 'never',
    'keys.not_used': 'never used',
    'keys.all_tenants': 'all tenants',
    'keys.active': 'active',
    'keys.revoked_at': 'revoked {time}',
    'keys.current': 'the key you are signed in with',
    'keys.revoke': 'Revoke',
    'keys.revoke_title': 'Revoke the key {name}?',
    'keys.revoke_body': 'Once revoked, requests with {prefix} are refused at once (401), and it cannot be undone; make a new key if one is still needed.',
    'keys.revoke_ok': 'Revoke it',
    'keys.revoked_done': 'The key {name} is revoked.',
    'keys.none': 'No keys yet.',
    'keys.create': 'New key',
    'keys.name': 'Name',
    'keys.name_hint': 'To tell the key apart, e.g. nurse-approver: 1-64 letters, digits, ".", "_" or "-", unique among active keys.',
    'keys.scopes': 'Scopes (tick any)',
    'keys.tenant': 'Tenant (optional)',
    'keys.tenant_hint': 'The key acts for this tenant only and sees only its knowledge bases and runs; left empty, the tenant "default". An admin key acts for every tenant and takes none.',
    'keys.expiry': 'Expiry',
    'keys.expiry_hint': 'Keys do not expire by themselves; revoke one in the list below when it is no longer needed.',
    'keys.submit': 'Create the key',
    'keys.secret_title': 'The new key {name} is created',
    'keys.secret_warn': 'Copy it now and keep it safe: it is shown this once and cannot be seen again once closed (the platform keeps only a digest of it).',
    'keys.copy': 'Copy',
    'keys.copied': 'Copied to the clipboard',
    'keys.copy_failed': 'Could not copy by itself; select the key above and copy it by hand.',
    'keys.secret_done': 'I have saved it, close',
    'keys.scope_admin': 'admin: every route for every tenant (key management and demos included)',
    'keys.scope_deploy': 'deploy: start, watch, cancel and resume training and release pipelines; never bound to a tenant',
    'keys.scope_inference': 'inference: chat, completions, embeddings, the model list',
    'keys.scope_knowledge_read': 'knowledge:read: list and search knowledge bases, their documents, snapshots and learned answers',
    'keys.scope_knowledge_write': 'knowledge:write: upload, delete, sync, snapshot, roll back; add and retract learned answers',
    'keys.scope_agents_run': 'agents:run: start and read agent runs, give feedback',
    'keys.scope_approve': 'approve: decide on waiting agent runs and pipelines (approve, edit then approve, reject), never a run the same key started',
  },
};

const CSS = `
.keys-scopes label { margin-bottom: .35rem; }
.keys-secret { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
.keys-secret input { flex: 1 1 20rem; font-family: monospace; margin-bottom: 0; }
.keys-secret button { width: auto; margin-bottom: 0; }
tr.keys-revoked td { color: var(--pico-muted-color); }
td.keys-actions button { width: auto; margin: 0; padding: .2rem .7rem; }
.keys-badges { display: flex; flex-wrap: wrap; gap: .2rem; }
`;

/** Scopes in the form's order, each with its one-line explanation (t key). */
const SCOPES = ['inference', 'knowledge:read', 'agents:run', 'approve', 'knowledge:write', 'deploy', 'admin'];
const DEFAULTS = ['inference', 'knowledge:read', 'agents:run']; // what `qingliang keys create` gives
const scopeText = (s) => t(`keys.scope_${s.replace(':', '_')}`);
const toneOf = (s) => (s === 'admin' ? 'bad' : s === 'deploy' || s === 'approve' ? 'warn' : 'info');

function Secret({ made, onDone }) {
  const input = useRef(null);
  const [copied, setCopied] = useState(null);
  useEffect(() => input.current && input.current.scrollIntoView({ block: 'center' }), [made.key]);
  const copy = async () => {
    input.current.select();
    try {
      await navigator.clipboard.writeText(made.key);
      setCopied('ok');
    } catch {
      // The clipboard API needs a secure context; selecting lets the user copy by hand.
      setCopied(document.execCommand && document.execCommand('copy') ? 'ok' : 'failed');
    }
  };
  return html`<article data-testid="keys-secret-panel">
    <header><strong>${t('keys.secret_title', { name: made.name })}</strong></header>
    <p class="notice" role="status" data-testid="keys-secret-warning">${t('keys.secret_warn')}</p>
    <div class="keys-secret">
      <input ref=${input} readonly value=${made.key} data-testid="keys-secret" aria-label=${made.prefix}
        onFocus=${(e) => e.target.select()} />
      <button type="button" data-testid="keys-copy" onClick=${copy}>${t('keys.copy')}</button>
    </div>
    ${copied && html`<p><small class=${copied === 'ok' ? 'muted' : 'field-error'} data-testid="keys-copied">
      ${copied === 'ok' ? t('keys.copied') : t('keys.copy_failed')}</small></p>`}
    <footer><button type="button" class="secondary" data-testid="keys-secret-done" onClick=${onDone}>${t('keys.secret_done')}</button></footer>
  </article>`;
}

function CreateForm({ onCreated }) {
  const [name, setName] = useState('');
  const [scopes, setScopes] = useState(DEFAULTS);
  const [tenant, setTenant] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const admin = scopes.includes('admin');
  const toggle = (s, on) => setScopes(on ? [...scopes, s] : scopes.filter((x) => x !== s));
  const bad = (field) => (error && error.param && error.param.split('[')[0] === field ? 'true' : undefined);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const body = { name: name.trim(), scopes: SCOPES.filter((s) => scopes.includes(s)) };
    if (tenant.trim()) body.tenant = tenant.trim();
    try {
      const made = await api.post('/v1/keys', body);
      setName('');
      setTenant('');
      setScopes(DEFAULTS);
      onCreated(made);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<article data-testid="keys-create">
    <header><strong>${t('keys.create')}</strong></header>
    <form onSubmit=${submit}>
      <label>${t('keys.name')}
        <input name="name" autocomplete="off" data-testid="keys-name" value=${name} aria-invalid=${bad('name')}
          onInput=${(e) => setName(e.target.value)} />
        <small class="muted">${t('keys.name_hint')}</small></label>
      <fieldset class="keys-scopes" data-testid="keys-scopes" aria-invalid=${bad('scopes')}>
        <legend>${t('keys.scopes')}</legend>
        ${SCOPES.map((s) => html`<label key=${s}><input type="checkbox" data-testid=${`keys-scope-${s.replace(':', '-')}`}
            checked=${scopes.includes(s)} onChange=${(e) => toggle(s, e.target.checked)} /> ${scopeText(s)}</label>`)}
      </fieldset>
      <label>${t('keys.tenant')}
        <input name="tenant" autocomplete="off" placeholder="default" data-testid="keys-tenant" value=${tenant}
          disabled=${admin} aria-invalid=${bad('tenant')} onInput=${(e) => setTenant(e.target.value)} />
        <small class="muted">${t('keys.tenant_hint')}</small></label>
      <p><strong>${t('keys.expiry')}</strong><br /><small class="muted" data-testid="keys-expiry">${t('keys.expiry_hint')}</small></p>
      <${ErrorBox} error=${error} testid="keys-create-error" />
      <button type="submit" data-testid="keys-submit" aria-busy=${busy} disabled=${busy}>${t('keys.submit')}</button>
    </form>
  </article>`;
}

function KeyRow({ k, mine, onRevoke }) {
  const id = k.name;
  return html`<tr class=${k.revoked ? 'keys-revoked' : ''} data-testid=${`keys-row-${id}`}>
    <td><strong>${k.name}</strong>${mine && html`<br /><small class="muted">${t('keys.current')}</small>`}</td>
    <td><code data-testid=${`keys-prefix-${id}`}>${k.prefix}</code></td>
    <td><span class="keys-badges" data-testid=${`keys-scopes-${id}`}>${k.scopes.map(
      (s) => html`<${Badge} key=${s} text=${s} tone=${k.revoked ? 'muted' : toneOf(s)} />`,
    )}</span></td>
    <td>${k.tenant || (k.scopes.includes('admin') ? t('keys.all_tenants') : 'default')}</td>
    <td>${fmtTime(k.created_at)}</td>
    <td>${k.expires_at ? fmtTime(k.expires_at) : t('keys.never')}</td>
    <td>${k.last_used_at ? fmtTime(k.last_used_at) : t('keys.not_used')}</td>
    <td data-testid=${`keys-state-${id}`}>${k.revoked
      ? html`<${Badge} tone="bad" text=${t('keys.revoked_at', { time: fmtTime(k.revoked_at) })} />`
      : html`<${Badge} tone="ok" text=${t('keys.active')} />`}</td>
    <td class="keys-actions">${!k.revoked && html`<button type="button" class="secondary outline"
        data-testid=${`keys-revoke-${id}`} onClick=${() => onRevoke(k)}>${t('keys.revoke')}</button>`}</td>
  </tr>`;
}

export default function Page() {
  const list = useAsync(() => api.get('/v1/keys'), []);
  const [made, setMade] = useState(null);
  const [asking, setAsking] = useState(null);
  const [revokeError, setRevokeError] = useState(null);
  const [done, setDone] = useState(null);
  const me = (session.whoami && session.whoami.name) || null;
  const keys = (list.data && list.data.data) || [];
  const revoke = async (k) => {
    setRevokeError(null);
    setDone(null);
    try {
      await api.del(`/v1/keys/${seg(k.id)}`);
      setDone(k.name);
    } catch (err) {
      setRevokeError(err);
    }
    list.reload();
  };
  return html`<style>${CSS}</style>
    <h2>${t('keys.title')}</h2>
    <p class="muted">${t('keys.intro')}</p>
    <section>
      <h3>${t('keys.list')}</h3>
      <${ErrorBox} error=${list.error} testid="keys-list-error" />
      <${ErrorBox} error=${revokeError} testid="keys-revoke-error" />
      ${done && html`<p class="muted" role="status" data-testid="keys-revoked-done">${t('keys.revoked_done', { name: done })}</p>`}
      <${Loading} when=${!list.data && list.loading} />
      ${list.data && !keys.length && html`<${Empty} text=${t('keys.none')} />`}
      ${keys.length > 0 && html`<div class="table-wrap"><table class="striped" data-testid="keys-list">
        <thead><tr>
          <th scope="col">${t('keys.col_name')}</th><th scope="col">${t('keys.col_prefix')}</th>
          <th scope="col">${t('keys.col_scopes')}</th><th scope="col">${t('keys.col_tenant')}</th>
          <th scope="col">${t('keys.col_created')}</th><th scope="col">${t('keys.col_expires')}</th>
          <th scope="col">${t('keys.col_used')}</th><th scope="col">${t('keys.col_state')}</th><th scope="col"></th>
        </tr></thead>
        <tbody>${keys.map((k) => html`<${KeyRow} key=${k.id} k=${k} mine=${!k.revoked && k.name === me} onRevoke=${setAsking} />`)}</tbody>
      </table></div>`}
    </section>
    ${made && html`<${Secret} made=${made} onDone=${() => setMade(null)} />`}
    <${CreateForm} onCreated=${(m) => { setMade(m); setDone(null); list.reload(); }} />
    <${Confirm} open=${!!asking} danger=${true} confirmLabel=${t('keys.revoke_ok')}
      title=${asking ? t('keys.revoke_title', { name: asking.name }) : ''}
      onClose=${(ok) => { const k = asking; setAsking(null); if (ok) revoke(k); }}>
      <p>${asking && t('keys.revoke_body', { prefix: asking.prefix })}</p><//>`;
}
