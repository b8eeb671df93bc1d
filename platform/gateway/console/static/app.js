// The console's shell: log in with a key, the navigation (only the pages the key's scopes
// allow), the language switch, and the current page, loaded on demand from pages/<id>.js.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, can, onUnauthorized, session } from './lib/api.js';
import { addStrings, getLang, setLang, t, useLang } from './lib/i18n.js';
import { ErrorBox, html, Loading } from './lib/ui.js';

addStrings({
  zh: {
    'app.name': '轻量 Qingliang',
    'app.console': '控制台',
    'login.title': '登录控制台',
    'login.key': 'API 密钥',
    'login.hint': '使用 qingliang keys create 创建的密钥;`make up` 写入的管理员密钥在 ~/.qingliang/api-key。密钥只保存在本标签页中。',
    'login.submit': '登录',
    'login.empty': '请输入 API 密钥',
    'nav.chat': '对话',
    'nav.approvals': '审批',
    'nav.knowledge': '知识库',
    'nav.runs': '运行记录',
    'nav.deployments': '部署',
    'nav.router': '路由器',
    'nav.metrics': '指标',
    'nav.demos': '演示',
    'nav.keys': '密钥',
    'nav.menu': '菜单',
    'nav.dashboard': 'Ray 仪表盘',
    'shell.logout': '退出',
    'shell.lang': 'English',
    'shell.tenant': '租户',
    'shell.all_tenants': '全部租户',
    'shell.expired': '密钥已失效或被撤销,请重新登录。',
    'shell.page_failed': '页面加载失败:{error}',
    'shell.no_page': '没有这个页面,或当前密钥无权访问:{page}',
    'common.loading': '加载中…',
    'common.empty': '暂无内容',
    'common.nodata': '所选时间段内没有数据',
    'common.cancel': '取消',
    'common.ok': '确定',
    'common.refresh': '刷新',
    'common.close': '关闭',
    'common.save': '保存',
    'common.details': '详情',
    'common.status': '状态',
    'common.name': '名称',
    'common.time': '时间',
  },
  en: {
    'app.name': 'Qingliang',
    'app.console': 'Console',
    'login.title': 'Sign in to the console',
    'login.key': 'API key',
    'login.hint': 'A key made with qingliang keys create; the admin key `make up` writes is in ~/.qingliang/api-key. The key is kept in this tab only.',
    'login.submit': 'Sign in',
    'login.empty': 'Enter an API key',
    'nav.chat': 'Chat',
    'nav.approvals': 'Approvals',
    'nav.knowledge': 'Knowledge',
    'nav.runs': 'Runs',
    'nav.deployments': 'Deployments',
    'nav.router': 'Router',
    'nav.metrics': 'Metrics',
    'nav.demos': 'Demos',
    'nav.keys': 'Keys',
    'nav.menu': 'Menu',
    'nav.dashboard': 'Ray dashboard',
    'shell.logout': 'Sign out',
    'shell.lang': '中文',
    'shell.tenant': 'Tenant',
    'shell.all_tenants': 'all tenants',
    'shell.expired': 'The key is no longer valid (revoked or expired). Sign in again.',
    'shell.page_failed': 'The page failed to load: {error}',
    'shell.no_page': 'No such page, or this key may not open it: {page}',
    'common.loading': 'Loading…',
    'common.empty': 'Nothing here yet',
    'common.nodata': 'No data in the chosen window',
    'common.cancel': 'Cancel',
    'common.ok': 'OK',
    'common.refresh': 'Refresh',
    'common.close': 'Close',
    'common.save': 'Save',
    'common.details': 'Details',
    'common.status': 'Status',
    'common.name': 'Name',
    'common.time': 'Time',
  },
});

/** The pages, in menu order, and the scopes that open each (any one; admin opens all). */
export const PAGES = [
  { id: 'chat', needs: ['inference', 'agents:run'] },
  { id: 'approvals', needs: ['approve'] },
  { id: 'knowledge', needs: ['knowledge:read', 'knowledge:write'] },
  { id: 'runs', needs: ['agents:run', 'approve', 'deploy'] },
  { id: 'deployments', needs: ['deploy', 'approve'] },
  { id: 'router', needs: ['agents:run'] },
  { id: 'metrics', needs: ['deploy', 'approve'] },
  { id: 'demos', needs: ['admin'] },
  { id: 'keys', needs: ['admin'] },
];

const allowed = () => PAGES.filter((p) => can(...p.needs));

/** The route in the address bar: #/<page>/<arg>/<arg>… */
function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || '', args: parts.slice(1) };
}

export function navigate(page, ...args) {
  location.hash = '#/' + [page, ...args].map(encodeURIComponent).join('/');
}

function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener('hashchange', on);
    on(); // a change made before this listener existed (right after signing in)
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

function Login({ onDone, notice }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const value = key.trim();
    if (!value) return setError(new ApiError(0, t('login.empty')));
    setBusy(true);
    setError(null);
    try {
      const who = await api.get('/v1/whoami', { key: value });
      session.key = value;
      session.whoami = who;
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="container login" data-testid="page-login">
    <article>
      <header><h1>${t('app.name')} <small class="muted">${t('app.console')}</small></h1></header>
      ${notice && html`<p class="notice" role="status">${notice}</p>`}
      <form onSubmit=${submit}>
        <label>${t('login.title')}
          <input type="password" autocomplete="off" name="key" placeholder=${t('login.key')}
            data-testid="login-key" value=${key} onInput=${(e) => setKey(e.target.value)} aria-invalid=${error ? 'true' : undefined} />
          <small class="muted">${t('login.hint')}</small>
        </label>
        <${ErrorBox} error=${error} testid="login-error" />
        <button type="submit" data-testid="login-submit" aria-busy=${busy}>${t('login.submit')}</button>
      </form>
      <footer><${LangSwitch} /></footer>
    </article></main>`;
}

function LangSwitch() {
  return html`<button type="button" class="secondary outline lang" data-testid="lang-switch"
    onClick=${() => setLang(getLang() === 'zh' ? 'en' : 'zh')}>${t('shell.lang')}</button>`;
}

function Header({ current, onLogout }) {
  const [open, setOpen] = useState(false);
  const who = session.whoami || {};
  const tenant = who.tenant || t('shell.all_tenants');
  useEffect(() => setOpen(false), [current]);
  return html`<header class="shell">
    <div class="brand"><a href="#/" data-testid="brand">${t('app.name')}</a>
      <button type="button" class="secondary outline menu" data-testid="menu" aria-expanded=${open}
        onClick=${() => setOpen(!open)}>☰ ${t('nav.menu')}</button></div>
    <nav data-testid="nav" class=${open ? 'open' : ''}><ul>
      ${allowed().map((p) => html`<li><a href=${`#/${p.id}`} data-testid=${`nav-${p.id}`}
          aria-current=${p.id === current ? 'page' : undefined}>${t(`nav.${p.id}`)}</a></li>`)}
      ${who.ray_dashboard && html`<li><a href=${who.ray_dashboard} target="_blank" rel="noopener noreferrer"
          data-testid="nav-ray-dashboard">${t('nav.dashboard')} ↗</a></li>`}
    </ul></nav>
    <div class="who">
      <span class="muted" data-testid="whoami">${who.name || '—'} · ${t('shell.tenant')}: ${tenant}</span>
      <${LangSwitch} />
      <button type="button" class="secondary" data-testid="logout" onClick=${onLogout}>${t('shell.logout')}</button>
    </div>
  </header>`;
}

const loaded = new Map();

/** Load pages/<id>.js once; register its strings; its default export is the component. */
function usePage(id) {
  const [state, setState] = useState({ id: null, Page: null, error: null });
  useEffect(() => {
    let live = true;
    if (!id) return undefined;
    const done = (mod) => {
      if (mod.strings) addStrings(mod.strings);
      loaded.set(id, mod);
      if (live) setState({ id, Page: mod.default, error: null });
    };
    if (loaded.has(id)) done(loaded.get(id));
    else import(`./pages/${id}.js`).then(done, (error) => live && setState({ id, Page: null, error }));
    return () => {
      live = false;
    };
  }, [id]);
  return state;
}

function Shell({ onLogout }) {
  const route = useRoute();
  const pages = allowed();
  const id = route.page || (pages[0] && pages[0].id);
  const known = pages.some((p) => p.id === id);
  const { Page, error, id: shown } = usePage(known ? id : null);
  let body;
  if (!known) body = html`<p class="error" role="alert">${t('shell.no_page', { page: id || '—' })}</p>`;
  else if (error) body = html`<p class="error" role="alert">${t('shell.page_failed', { error: error.message })}</p>`;
  else if (!Page || shown !== id) body = html`<${Loading} />`;
  else body = html`<${Page} args=${route.args} navigate=${navigate} />`;
  return html`<${Header} current=${id} onLogout=${onLogout} />
    <main class="container-fluid page" data-testid=${`page-${id || 'none'}`}>${body}</main>`;
}

function App() {
  useLang();
  const [state, setState] = useState(session.key ? 'checking' : 'login');
  const [notice, setNotice] = useState(null);
  useEffect(() => {
    if (state !== 'checking') return;
    api.get('/v1/whoami').then(
      (who) => {
        session.whoami = who;
        setState('in');
      },
      (err) => {
        session.key = null;
        setNotice(err.status === 401 ? t('shell.expired') : err.message);
        setState('login');
      },
    );
  }, [state]);
  useEffect(
    () =>
      onUnauthorized(() => {
        session.key = null;
        session.whoami = null;
        setNotice(t('shell.expired'));
        setState('login');
      }),
    [],
  );
  const logout = () => {
    session.key = null;
    session.whoami = null;
    setNotice(null);
    setState('login');
  };
  if (state === 'checking') return html`<${Loading} />`;
  if (state === 'login') return html`<${Login} notice=${notice} onDone=${() => { setNotice(null); setState('in'); }} />`;
  return html`<${Shell} onLogout=${logout} />`;
}

const root = document.getElementById('app');
root.textContent = ''; // the boot placeholder of index.html: Preact renders next to children
render(html`<${App} />`, root);
