// Knowledge bases: the list a key may see (#/knowledge), and one base (#/knowledge/<kb>/<tab>)
// with its documents, uploads, search, versions and snapshots, and learned answers.
// Only the public /v1/knowledge routes; buttons that change a base need knowledge:write.
import { Badge, Confirm, Empty, ErrorBox, Field, html, Json, Loading, Tabs, useAsync } from '../lib/ui.js';
import { api, can, seg } from '../lib/api.js';
import { fmtNum, fmtTime, t } from '../lib/i18n.js';
import { useEffect, useRef, useState } from 'preact/hooks';

export const strings = {
  zh: {
    'knowledge.title': '知识库',
    'knowledge.intro': '当前密钥可以查看的知识库。点击名称查看文档、上传、检索和版本。',
    'knowledge.none': '当前密钥看不到任何知识库。可用 qingliang apply -f 创建一个。',
    'knowledge.col.name': '名称',
    'knowledge.col.tenant': '租户',
    'knowledge.col.domain': '领域',
    'knowledge.col.documents': '文档',
    'knowledge.col.chunks': '片段',
    'knowledge.col.answers': '学习的答案',
    'knowledge.col.embedding': '向量模型',
    'knowledge.col.version': '当前版本',
    'knowledge.col.snapshot': '最新快照',
    'knowledge.col.changed': '最近变更',
    'knowledge.uploaded_n': '其中上传 {n} 个',
    'knowledge.back': '← 全部知识库',
    'knowledge.summary': '租户 {tenant} · 领域 {domain} · 版本 v{version} · {documents} 个文档 · {chunks} 个片段 · 向量模型 {embedding}',
    'knowledge.not_synced': '这个知识库还没有同步过,暂时不能检索。',
    'knowledge.tab.documents': '文档',
    'knowledge.tab.upload': '上传',
    'knowledge.tab.search': '检索',
    'knowledge.tab.versions': '版本与快照',
    'knowledge.tab.answers': '学习的答案',
    'knowledge.doc.source': '文档',
    'knowledge.doc.type': '类型',
    'knowledge.doc.origin': '来源',
    'knowledge.doc.uploaded': '上传',
    'knowledge.doc.folder': '清单来源',
    'knowledge.doc.chunks': '片段数',
    'knowledge.doc.version': '版本',
    'knowledge.doc.state': '状态',
    'knowledge.doc.ok': '已入库',
    'knowledge.doc.failed': '入库失败',
    'knowledge.doc.delete': '删除',
    'knowledge.doc.delete_title': '删除文档',
    'knowledge.doc.delete_text': '确定删除“{name}”及它的 {chunks} 个片段吗?删除会产生一个新版本,之后可以回滚到删除前的快照。',
    'knowledge.doc.deleted': '已删除“{name}”:删除 {deleted} 个片段,现在是版本 v{version}。',
    'knowledge.doc.dismiss': '不再显示',
    'knowledge.doc.recorded': '记录于最近一次同步({time}),修复文件后再同步即可。',
    'knowledge.hist.title': '变更记录',
    'knowledge.hist.col.time': '时间',
    'knowledge.hist.col.action': '操作',
    'knowledge.hist.col.version': '产生的版本',
    'knowledge.hist.col.actor': '操作者',
    'knowledge.hist.col.figures': '内容',
    'knowledge.hist.added': '新增',
    'knowledge.hist.updated': '更新',
    'knowledge.hist.deleted': '删除',
    'knowledge.hist.errors': '失败文件',
    'knowledge.hist.points': '片段数',
    'knowledge.hist.note': '说明',
    'knowledge.hist.to': '回滚到',
    'knowledge.hist.reason': '理由',
    'knowledge.doc.source_only': '清单来源中的文档只能在源文件夹中修改,然后同步。',
    'knowledge.docs.none': '还没有文档。',
    'knowledge.sync': '与来源同步',
    'knowledge.synced': '同步完成,现在是版本 v{version}:新增 {added}、更新 {updated}、未变 {unchanged}、删除 {deleted} 个片段。',
    'knowledge.skipped': '未读取:{path}({reason})',
    'knowledge.up.drop': '把文件拖到这里,或点击选择文件(可多选)',
    'knowledge.up.types': '支持 PDF、Word、Excel、Markdown、文本、CSV、JSON、HTML 和图片。同名文件会替换之前上传的版本。',
    'knowledge.up.pick': '选择文件',
    'knowledge.up.queued': '等待中',
    'knowledge.up.sending': '上传中 {pct}%',
    'knowledge.up.indexing': '解析并写入中…',
    'knowledge.up.done': '完成',
    'knowledge.up.failed': '失败',
    'knowledge.up.result': '新增 {added}、更新 {updated}、未变 {unchanged} 个片段,现在是版本 v{version}',
    'knowledge.up.partial': '部分内容未能读取:{path}:{reason}',
    'knowledge.up.clear': '清除已完成的',
    'knowledge.up.readonly': '当前密钥只能查看,不能上传。',
    'knowledge.search.query': '检索内容',
    'knowledge.search.placeholder': '例如:周末门诊几点开放',
    'knowledge.search.image': '以图检索(可选)',
    'knowledge.search.image_clear': '去掉图片',
    'knowledge.search.k': '返回条数',
    'knowledge.search.mode': '方式',
    'knowledge.search.mode_auto': '默认',
    'knowledge.search.mode_hybrid': '混合(向量 + 关键词)',
    'knowledge.search.mode_dense': '仅向量',
    'knowledge.search.go': '检索',
    'knowledge.search.empty': '没有找到相关内容。',
    'knowledge.search.meta': '版本 v{version} · 方式 {mode} · {n} 条结果',
    'knowledge.search.image_query': '图片查询:{text}',
    'knowledge.search.image_ocr': '从图片中识别出的文字:“{text}”(已加入检索内容)',
    'knowledge.search.need': '请输入检索内容或选择一张图片。',
    'knowledge.hit.score': '得分',
    'knowledge.hit.open': '查看全文',
    'knowledge.hit.chunk': '第 {n} 段',
    'knowledge.hit.detail': '引用详情',
    'knowledge.hit.passage': '匹配的段落',
    'knowledge.hit.context': '上下文(前后相邻的片段)',
    'knowledge.cite.document': '文档',
    'knowledge.cite.title': '标题',
    'knowledge.cite.doc_id': '文档编号',
    'knowledge.cite.chunk': '片段编号',
    'knowledge.cite.heading': '章节',
    'knowledge.cite.locator': '位置',
    'knowledge.cite.page': '页码',
    'knowledge.cite.rows': '行',
    'knowledge.cite.region': '图片区域',
    'knowledge.cite.image': '图片',
    'knowledge.cite.kind': '类型',
    'knowledge.cite.version': '写入版本',
    'knowledge.cite.written': '写入时间',
    'knowledge.cite.provenance': '答案来源',
    'knowledge.ver.current': '当前版本 v{version}',
    'knowledge.ver.last': '最近一次变更:{time},新增 {added}、更新 {updated}、删除 {deleted} 个片段',
    'knowledge.ver.note': '备注(可选)',
    'knowledge.ver.take': '保存快照',
    'knowledge.ver.taken': '已保存快照 v{version}({points} 个片段)。',
    'knowledge.ver.snapshots': '快照(保存的版本)',
    'knowledge.ver.none': '还没有快照。',
    'knowledge.ver.col.version': '版本',
    'knowledge.ver.col.time': '保存时间',
    'knowledge.ver.col.points': '片段数',
    'knowledge.ver.col.note': '备注',
    'knowledge.ver.rollback': '回滚到此版本',
    'knowledge.ver.rollback_title': '回滚知识库',
    'knowledge.ver.rollback_text': '确定把“{kb}”回滚到快照 v{version} 吗?之后上传或修改的内容将从检索中消失。回滚本身会记为一个新版本;源文件和上传的文件都不删除,下次同步会把它们重新加入。',
    'knowledge.ver.rolled': '已回滚到快照 v{to},现在是版本 v{version}:恢复 {upserted} 个、删除 {deleted} 个片段。',
    'knowledge.ver.auto': '自动',
    'knowledge.ver.is_current': '当前',
    'knowledge.ver.history': '版本说明:每次同步、上传、删除、回滚或学习答案都会产生一个新版本;有变化的同步会自动保存快照(保留最近 5 个)。',
    'knowledge.ans.show': '显示',
    'knowledge.ans.active': '生效中',
    'knowledge.ans.retracted': '已撤回',
    'knowledge.ans.all': '全部',
    'knowledge.ans.question': '问题',
    'knowledge.ans.answer': '答案',
    'knowledge.ans.source': '来源',
    'knowledge.ans.by': '提交人',
    'knowledge.ans.status': '状态',
    'knowledge.ans.version': '版本',
    'knowledge.ans.time': '时间',
    'knowledge.ans.none': '还没有学习的答案。',
    'knowledge.ans.add': '添加答案',
    'knowledge.ans.added': '已添加,立即可检索(版本 v{version})。',
    'knowledge.ans.retract': '撤回',
    'knowledge.ans.retract_title': '撤回答案',
    'knowledge.ans.reason': '撤回原因(必填)',
    'knowledge.ans.retracted_by': '{by} 于 {time} 撤回:{reason}',
  },
  en: {
    'knowledge.title': 'Knowledge bases',
    'knowledge.intro': 'The knowledge bases this key may see. Click a name for its documents, uploads, search and versions.',
    'knowledge.none': 'This key sees no knowledge base. Create one with qingliang apply -f.',
    'knowledge.col.name': 'Name',
    'knowledge.col.tenant': 'Tenant',
    'knowledge.col.domain': 'Domain',
    'knowledge.col.documents': 'Documents',
    'knowledge.col.chunks': 'Chunks',
    'knowledge.col.answers': 'Learned answers',
    'knowledge.col.embedding': 'Embedder',
    'knowledge.col.version': 'Version',
    'knowledge.col.snapshot': 'Latest snapshot',
    'knowledge.col.changed': 'Last change',
    'knowledge.uploaded_n': '{n} uploaded',
    'knowledge.back': '← All knowledge bases',
    'knowledge.summary': 'Tenant {tenant} · domain {domain} · version v{version} · {documents} documents · {chunks} chunks · embedder {embedding}',
    'knowledge.not_synced': 'This knowledge base has not been synced yet, so it cannot be searched.',
    'knowledge.tab.documents': 'Documents',
    'knowledge.tab.upload': 'Upload',
    'knowledge.tab.search': 'Search',
    'knowledge.tab.versions': 'Versions & snapshots',
    'knowledge.tab.answers': 'Learned answers',
    'knowledge.doc.source': 'Document',
    'knowledge.doc.type': 'Type',
    'knowledge.doc.origin': 'Origin',
    'knowledge.doc.uploaded': 'upload',
    'knowledge.doc.folder': 'manifest source',
    'knowledge.doc.chunks': 'Chunks',
    'knowledge.doc.version': 'Version',
    'knowledge.doc.state': 'State',
    'knowledge.doc.ok': 'stored',
    'knowledge.doc.failed': 'failed',
    'knowledge.doc.delete': 'Delete',
    'knowledge.doc.delete_title': 'Delete a document',
    'knowledge.doc.delete_text': 'Delete “{name}” and its {chunks} chunks? This makes a new version; you can roll back to a snapshot from before.',
    'knowledge.doc.deleted': 'Deleted “{name}”: {deleted} chunks removed, now version v{version}.',
    'knowledge.doc.dismiss': 'Dismiss',
    'knowledge.doc.recorded': 'Recorded by the latest sync ({time}); fix the file and sync again.',
    'knowledge.hist.title': 'History',
    'knowledge.hist.col.time': 'Time',
    'knowledge.hist.col.action': 'Action',
    'knowledge.hist.col.version': 'Version made',
    'knowledge.hist.col.actor': 'By',
    'knowledge.hist.col.figures': 'What changed',
    'knowledge.hist.added': 'added',
    'knowledge.hist.updated': 'updated',
    'knowledge.hist.deleted': 'deleted',
    'knowledge.hist.errors': 'failed files',
    'knowledge.hist.points': 'chunks',
    'knowledge.hist.note': 'note',
    'knowledge.hist.to': 'rolled back to',
    'knowledge.hist.reason': 'reason',
    'knowledge.doc.source_only': 'Documents from the manifest’s sources change in their folder, then a sync.',
    'knowledge.docs.none': 'No documents yet.',
    'knowledge.sync': 'Sync with sources',
    'knowledge.synced': 'Synced, now version v{version}: {added} added, {updated} updated, {unchanged} unchanged, {deleted} deleted chunks.',
    'knowledge.skipped': 'Not read: {path} ({reason})',
    'knowledge.up.drop': 'Drop files here, or click to choose files (several at once)',
    'knowledge.up.types': 'PDF, Word, Excel, Markdown, text, CSV, JSON, HTML and images. A file with the name of an earlier upload replaces it.',
    'knowledge.up.pick': 'Choose files',
    'knowledge.up.queued': 'waiting',
    'knowledge.up.sending': 'uploading {pct}%',
    'knowledge.up.indexing': 'parsing and storing…',
    'knowledge.up.done': 'done',
    'knowledge.up.failed': 'failed',
    'knowledge.up.result': '{added} added, {updated} updated, {unchanged} unchanged chunks; now version v{version}',
    'knowledge.up.partial': 'Part could not be read: {path}: {reason}',
    'knowledge.up.clear': 'Clear finished',
    'knowledge.up.readonly': 'This key may only read; it cannot upload.',
    'knowledge.search.query': 'Search for',
    'knowledge.search.placeholder': 'e.g. when does the clinic open at the weekend',
    'knowledge.search.image': 'Search with an image (optional)',
    'knowledge.search.image_clear': 'Remove the image',
    'knowledge.search.k': 'Results',
    'knowledge.search.mode': 'Mode',
    'knowledge.search.mode_auto': 'default',
    'knowledge.search.mode_hybrid': 'hybrid (vectors + keywords)',
    'knowledge.search.mode_dense': 'vectors only',
    'knowledge.search.go': 'Search',
    'knowledge.search.empty': 'Nothing found.',
    'knowledge.search.meta': 'version v{version} · mode {mode} · {n} results',
    'knowledge.search.image_query': 'Image query: {text}',
    'knowledge.search.image_ocr': 'Text read in the image: “{text}” (added to the search)',
    'knowledge.search.need': 'Enter something to search for, or choose an image.',
    'knowledge.hit.score': 'score',
    'knowledge.hit.open': 'Read it all',
    'knowledge.hit.chunk': 'part {n}',
    'knowledge.hit.detail': 'Citation',
    'knowledge.hit.passage': 'Matched passage',
    'knowledge.hit.context': 'Context (the neighbouring chunks)',
    'knowledge.cite.document': 'Document',
    'knowledge.cite.title': 'Title',
    'knowledge.cite.doc_id': 'Document id',
    'knowledge.cite.chunk': 'Chunk index',
    'knowledge.cite.heading': 'Section',
    'knowledge.cite.locator': 'Place',
    'knowledge.cite.page': 'Page',
    'knowledge.cite.rows': 'Rows',
    'knowledge.cite.region': 'Image region',
    'knowledge.cite.image': 'Image',
    'knowledge.cite.kind': 'Kind',
    'knowledge.cite.version': 'Written in version',
    'knowledge.cite.written': 'Written at',
    'knowledge.cite.provenance': 'Answer from',
    'knowledge.ver.current': 'Current version v{version}',
    'knowledge.ver.last': 'Last change: {time}, {added} added, {updated} updated, {deleted} deleted chunks',
    'knowledge.ver.note': 'Note (optional)',
    'knowledge.ver.take': 'Take a snapshot',
    'knowledge.ver.taken': 'Snapshot v{version} saved ({points} chunks).',
    'knowledge.ver.snapshots': 'Snapshots (saved versions)',
    'knowledge.ver.none': 'No snapshots yet.',
    'knowledge.ver.col.version': 'Version',
    'knowledge.ver.col.time': 'Saved',
    'knowledge.ver.col.points': 'Chunks',
    'knowledge.ver.col.note': 'Note',
    'knowledge.ver.rollback': 'Roll back to this',
    'knowledge.ver.rollback_title': 'Roll back the knowledge base',
    'knowledge.ver.rollback_text': 'Roll “{kb}” back to snapshot v{version}? What was uploaded or changed since leaves the search. The rollback is recorded as a new version; source and uploaded files are kept, so the next sync brings them back.',
    'knowledge.ver.rolled': 'Rolled back to snapshot v{to}, now version v{version}: {upserted} chunks restored, {deleted} deleted.',
    'knowledge.ver.auto': 'automatic',
    'knowledge.ver.is_current': 'current',
    'knowledge.ver.history': 'Every sync, upload, delete, rollback or learned answer makes a new version; a sync that changes something saves a snapshot (the newest 5 are kept).',
    'knowledge.ans.show': 'Show',
    'knowledge.ans.active': 'active',
    'knowledge.ans.retracted': 'retracted',
    'knowledge.ans.all': 'all',
    'knowledge.ans.question': 'Question',
    'knowledge.ans.answer': 'Answer',
    'knowledge.ans.source': 'Source',
    'knowledge.ans.by': 'By',
    'knowledge.ans.status': 'Status',
    'knowledge.ans.version': 'Version',
    'knowledge.ans.time': 'Time',
    'knowledge.ans.none': 'No learned answers yet.',
    'knowledge.ans.add': 'Add an answer',
    'knowledge.ans.added': 'Added; searchable now (version v{version}).',
    'knowledge.ans.retract': 'Retract',
    'knowledge.ans.retract_title': 'Retract an answer',
    'knowledge.ans.reason': 'Why (required)',
    'knowledge.ans.retracted_by': 'retracted by {by} at {time}: {reason}',
  },
};

const SMALL = { width: 'auto', padding: '.15rem .6rem', fontSize: '.85rem', margin: 0 };
const GRID = { display: 'grid', gridTemplateColumns: 'max-content 1fr', gap: '.15rem 1rem' };
const kbPath = (kb, rest = '') => `/v1/knowledge/${seg(kb)}${rest}`;
const writer = () => can('knowledge:write');

export default function Page({ args, navigate }) {
  const [kb, tab] = args;
  if (!kb) return html`<${KbList} navigate=${navigate} />`;
  return html`<${KbDetail} key=${kb} kb=${kb} tab=${tab} navigate=${navigate} />`;
}

// ------------------------------------------------------------------------------ the list

function latestSnapshot(stats) {
  const snaps = (stats && stats.snapshots) || [];
  return snaps.reduce((best, s) => (!best || s.version > best.version ? s : best), null);
}

function KbList({ navigate }) {
  const list = useAsync(async () => {
    const names = ((await api.get('/v1/knowledge')).data || []).map((d) => d.id);
    return Promise.all(
      names.map(async (name) => {
        try {
          return { name, stats: await api.get(kbPath(name)) };
        } catch (error) {
          return { name, error };
        }
      }),
    );
  }, []);
  const rows = list.data || [];
  return html`<section data-testid="knowledge-list-page">
    <div class="toolbar"><h2>${t('knowledge.title')}</h2>
      <button type="button" class="secondary outline" data-testid="knowledge-refresh" onClick=${list.reload}>${t('common.refresh')}</button></div>
    <p class="muted">${t('knowledge.intro')}</p>
    <${ErrorBox} error=${list.error} testid="knowledge-error" />
    ${list.loading && !list.data ? html`<${Loading} />` : rows.length === 0 && !list.error
      ? html`<${Empty} text=${t('knowledge.none')} />`
      : html`<div class="table-wrap"><table class="striped" data-testid="knowledge-list"><thead><tr>
          ${['name', 'tenant', 'documents', 'chunks', 'answers', 'embedding', 'version', 'changed'].map(
            (c) => html`<th scope="col">${t(`knowledge.col.${c}`)}</th>`)}
        </tr></thead><tbody>${rows.map((r) => html`<${KbRow} row=${r} navigate=${navigate} />`)}</tbody></table></div>`}
  </section>`;
}

function KbRow({ row, navigate }) {
  const { name, stats: s, error } = row;
  const link = html`<a href=${`#/knowledge/${seg(name)}`} data-testid="knowledge-open"
    onClick=${(e) => { e.preventDefault(); navigate('knowledge', name); }}>${name}</a>`;
  if (error) return html`<tr data-testid="knowledge-kb" data-kb=${name}><td>${link}</td>
    <td colspan="7"><${ErrorBox} error=${error} testid="knowledge-kb-error" /></td></tr>`;
  const snap = latestSnapshot(s);
  return html`<tr data-testid="knowledge-kb" data-kb=${name}>
    <td><strong>${link}</strong>${s.domain && html`<br /><small class="muted">${t('knowledge.col.domain')}: ${s.domain}</small>`}</td>
    <td data-testid="knowledge-kb-tenant">${s.tenant}</td>
    <td>${fmtNum(s.documents)}${s.uploaded_documents ? html`<br /><small class="muted">${t('knowledge.uploaded_n', { n: s.uploaded_documents })}</small>` : ''}</td>
    <td>${fmtNum(s.chunks)}</td><td>${fmtNum(s.answers)}</td><td>${s.embedding}</td>
    <td>v${s.version}${snap && html`<br /><small class="muted">${t('knowledge.col.snapshot')}: v${snap.version}</small>`}</td>
    <td>${s.last_sync ? fmtTime(s.last_sync.at) : '—'}</td></tr>`;
}

// ---------------------------------------------------------------------------- one base

const TABS = ['documents', 'upload', 'search', 'versions', 'answers'];

function KbDetail({ kb, tab, navigate }) {
  const stats = useAsync(() => api.get(kbPath(kb)), [kb]);
  const [failures, setFailures] = useState([]);
  const uploads = useUploads(kb, (name, error) => {
    setFailures((list) => [
      ...list.filter((f) => f.source !== name),
      ...(error ? [{ source: name, reason: error.message, status: error.status }] : []),
    ]);
    stats.reload();
  });
  const back = html`<p><a href="#/knowledge" data-testid="knowledge-back">${t('knowledge.back')}</a></p>`;
  if (stats.loading && !stats.data) return html`${back}<${Loading} />`;
  if (!stats.data) return html`${back}<h2>${kb}</h2><${ErrorBox} error=${stats.error} testid="knowledge-error" />`;
  const s = stats.data;
  const tabs = TABS.filter((id) => id !== 'upload' || writer()).map((id) => ({ id, label: t(`knowledge.tab.${id}`) }));
  const active = tabs.some((x) => x.id === tab) ? tab : 'documents';
  const props = { kb, stats: s, onChanged: stats.reload };
  return html`<section data-testid="knowledge-detail" data-kb=${kb}>
    ${back}
    <div class="toolbar"><h2 data-testid="knowledge-title">${kb}</h2>
      <button type="button" class="secondary outline" data-testid="knowledge-refresh" onClick=${stats.reload}>${t('common.refresh')}</button></div>
    <p class="muted" data-testid="knowledge-summary">${t('knowledge.summary', {
      tenant: s.tenant, domain: s.domain || '—', version: s.version, documents: fmtNum(s.documents),
      chunks: fmtNum(s.chunks), embedding: s.embedding })}</p>
    ${!s.spec && html`<p class="notice" data-testid="knowledge-not-synced">${t('knowledge.not_synced')}</p>`}
    <${ErrorBox} error=${stats.error} testid="knowledge-error" />
    <${Tabs} tabs=${tabs} active=${active} testid="knowledge-tabs" onChange=${(id) => navigate('knowledge', kb, id)} />
    ${active === 'documents' && html`<${DocumentsTab} ...${props} failures=${failures} setFailures=${setFailures} />`}
    ${active === 'upload' && html`<${UploadTab} uploads=${uploads} />`}
    ${active === 'search' && html`<${SearchTab} ...${props} />`}
    ${active === 'versions' && html`<${VersionsTab} ...${props} />`}
    ${active === 'answers' && html`<${AnswersTab} ...${props} />`}
  </section>`;
}

// --------------------------------------------------------------------------- documents

/** The files the latest sync of `kb` could not ingest, as its history recorded them. */
function useRecordedFailures(kb) {
  const history = useAsync(() => api.get(kbPath(kb, '/history?limit=50')), [kb]);
  const events = (history.data && history.data.data) || [];
  const last = events.find((e) => e.action === 'sync' || e.action === 'rebuild');
  const failed = (last && last.detail && last.detail.failed) || [];
  return {
    reload: history.reload,
    error: history.error,
    rows: failed.map((f) => ({ source: f.path, reason: f.reason, origin: 'recorded', at: last.at })),
  };
}

function DocumentsTab({ kb, onChanged, failures, setFailures }) {
  const docs = useAsync(() => api.get(kbPath(kb, '/documents')), [kb]);
  const recorded = useRecordedFailures(kb);
  const [doomed, setDoomed] = useState(null);
  const [error, setError] = useState(null);
  const [outcome, setOutcome] = useState(null);
  const [busy, setBusy] = useState(false);
  const act = async (fn) => {
    setBusy(true);
    setError(null);
    setOutcome(null);
    try {
      setOutcome(await fn());
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      docs.reload();
      recorded.reload();
      onChanged();
    }
  };
  const remove = (doc) => act(async () => {
    const r = await api.del(kbPath(kb, `/documents/${seg(doc.doc_id)}`));
    return { text: t('knowledge.doc.deleted', { name: doc.source, deleted: r.deleted, version: r.version }) };
  });
  const sync = () => act(async () => {
    const r = await api.post(kbPath(kb, '/sync'), {});
    setFailures((list) => [
      ...list.filter((f) => f.origin !== 'sync'),
      ...r.errors.map((e) => ({ source: e.path, reason: e.reason, origin: 'sync' })),
    ]);
    return { text: t('knowledge.synced', r), skipped: r.skipped };
  });
  const rows = (docs.data && docs.data.data) || [];
  // This session's upload and sync errors, then what the last sync recorded (same file once).
  const shownFailures = [...failures, ...recorded.rows.filter((r) => !failures.some((f) => f.source === r.source))];
  return html`<div data-testid="knowledge-documents">
    ${writer() && html`<div class="toolbar"><button type="button" class="secondary" data-testid="knowledge-sync"
      aria-busy=${busy} disabled=${busy} onClick=${sync}>${t('knowledge.sync')}</button></div>`}
    <${ErrorBox} error=${docs.error} testid="knowledge-docs-error" />
    <${ErrorBox} error=${error} testid="knowledge-action-error" />
    ${outcome && html`<p class="notice" role="status" data-testid="knowledge-action-result">${outcome.text}
      ${(outcome.skipped || []).map((k) => html`<br /><small>${t('knowledge.skipped', k)}</small>`)}</p>`}
    <${ErrorBox} error=${recorded.error} testid="knowledge-history-error" />
    ${docs.loading && !docs.data ? html`<${Loading} />` : rows.length + shownFailures.length === 0
      ? html`<${Empty} text=${t('knowledge.docs.none')} />`
      : html`<div class="table-wrap"><table class="striped" data-testid="knowledge-docs"><thead><tr>
          ${['source', 'type', 'origin', 'chunks', 'version', 'state'].map((c) => html`<th scope="col">${t(`knowledge.doc.${c}`)}</th>`)}<th></th>
        </tr></thead><tbody>
          ${shownFailures.map((f) => html`<tr data-testid="knowledge-doc-failed" data-source=${f.source} data-origin=${f.origin || 'session'}>
            <td>${f.source}</td><td colspan="4"><span class="error" data-testid="knowledge-doc-error">${f.reason}</span>
              ${f.origin === 'recorded' && html`<br /><small class="muted">${t('knowledge.doc.recorded', { time: fmtTime(f.at) })}</small>`}</td>
            <td><${Badge} text=${t('knowledge.doc.failed')} tone="bad" testid="knowledge-doc-state" /></td>
            <td>${f.origin !== 'recorded' && html`<button type="button" class="secondary outline" style=${SMALL} data-testid="knowledge-doc-dismiss"
              onClick=${() => setFailures((list) => list.filter((x) => x !== f))}>${t('knowledge.doc.dismiss')}</button>`}</td></tr>`)}
          ${rows.map((d) => html`<tr key=${d.doc_id} data-testid="knowledge-doc" data-source=${d.source}>
            <td><strong>${d.source}</strong>${d.record ? html` <small>#${d.record}</small>` : ''}
              ${d.title && html`<br /><small class="muted">${d.title}</small>`}</td>
            <td>${d.type || '—'}</td>
            <td>${d.uploaded ? t('knowledge.doc.uploaded') : html`<span title=${t('knowledge.doc.source_only')}>${t('knowledge.doc.folder')}</span>`}</td>
            <td data-testid="knowledge-doc-chunks">${fmtNum(d.chunks)}</td><td>v${d.version}</td>
            <td><${Badge} text=${t('knowledge.doc.ok')} tone="ok" testid="knowledge-doc-state" /></td>
            <td>${writer() && d.uploaded && html`<button type="button" class="secondary outline" style=${SMALL} data-testid="knowledge-doc-delete"
              disabled=${busy} onClick=${() => setDoomed(d)}>${t('knowledge.doc.delete')}</button>`}</td></tr>`)}
        </tbody></table></div>`}
    <${Confirm} open=${!!doomed} title=${t('knowledge.doc.delete_title')} danger confirmLabel=${t('knowledge.doc.delete')}
      onClose=${(ok) => { const d = doomed; setDoomed(null); if (ok) remove(d); }}>
      <p>${doomed && t('knowledge.doc.delete_text', { name: doomed.source, chunks: doomed.chunks })}</p></${Confirm}>
  </div>`;
}

// ------------------------------------------------------------------------------ upload

/** Files to upload to `kb`, one after another; `onResult(name, error|null)` after each. */
function useUploads(kb, onResult) {
  const [items, setItems] = useState([]);
  const chain = useRef(Promise.resolve());
  const seq = useRef(0);
  const patch = (id, p) => setItems((list) => list.map((it) => (it.id === id ? { ...it, ...p } : it)));
  const run = async (item) => {
    patch(item.id, { state: 'sending' });
    try {
      const result = await api.upload(kbPath(kb, '/documents'), { file: item.file }, (p) =>
        patch(item.id, { progress: p, state: p >= 1 ? 'indexing' : 'sending' }));
      patch(item.id, { state: 'done', progress: 1, result, file: null });
      onResult(item.name, null);
    } catch (error) {
      patch(item.id, { state: 'failed', error, file: null });
      onResult(item.name, error);
    }
  };
  const add = (files) => {
    const fresh = [...files].map((file) => ({ id: ++seq.current, name: file.name, size: file.size, file, progress: 0, state: 'queued' }));
    setItems((list) => [...list, ...fresh]);
    for (const item of fresh) chain.current = chain.current.then(() => run(item));
  };
  const clear = () => setItems((list) => list.filter((it) => it.state !== 'done' && it.state !== 'failed'));
  return { items, add, clear };
}

function UploadTab({ uploads }) {
  const [over, setOver] = useState(false);
  const input = useRef(null);
  if (!writer()) return html`<p class="muted">${t('knowledge.up.readonly')}</p>`;
  const drop = (e) => {
    e.preventDefault();
    setOver(false);
    if (e.dataTransfer && e.dataTransfer.files.length) uploads.add(e.dataTransfer.files);
  };
  const picked = (e) => {
    if (e.target.files.length) uploads.add(e.target.files);
    e.target.value = '';
  };
  const finished = uploads.items.some((it) => it.state === 'done' || it.state === 'failed');
  return html`<div data-testid="knowledge-upload">
    <div class=${`dropzone ${over ? 'over' : ''}`} data-testid="knowledge-dropzone"
      onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragEnter=${(e) => { e.preventDefault(); setOver(true); }}
      onDragLeave=${() => setOver(false)} onDrop=${drop}>
      <p><strong>${t('knowledge.up.drop')}</strong></p>
      <label class="pick">${t('knowledge.up.pick')}
        <input ref=${input} type="file" multiple data-testid="knowledge-file-input" onChange=${picked} /></label>
      <small class="muted">${t('knowledge.up.types')}</small>
    </div>
    ${finished && html`<div class="toolbar"><button type="button" class="secondary outline" data-testid="knowledge-upload-clear"
      onClick=${uploads.clear}>${t('knowledge.up.clear')}</button></div>`}
    <ul class="uploads" data-testid="knowledge-uploads">${uploads.items.map((it) => html`<${UploadItem} key=${it.id} item=${it} />`)}</ul>
  </div>`;
}

function UploadItem({ item }) {
  const r = item.result;
  const label = item.state === 'sending' ? t('knowledge.up.sending', { pct: Math.round(item.progress * 100) }) : t(`knowledge.up.${item.state}`);
  const tone = { done: 'ok', failed: 'bad', queued: 'muted' }[item.state] || 'warn';
  return html`<li data-testid="knowledge-upload-item" data-file=${item.name} data-state=${item.state}>
    <div class="toolbar"><strong>${item.name}</strong> <small class="muted">${fmtNum(item.size)} B</small>
      <${Badge} text=${label} tone=${tone} testid="knowledge-upload-status" /></div>
    ${item.state !== 'failed' && html`<progress data-testid="knowledge-upload-progress" max="1"
      value=${item.state === 'indexing' || item.state === 'queued' ? undefined : item.progress}></progress>`}
    ${r && html`<p class="muted" data-testid="knowledge-upload-result">${t('knowledge.up.result', r)}
      ${r.errors.map((e) => html`<br /><span class="error">${t('knowledge.up.partial', e)}</span>`)}</p>`}
    <${ErrorBox} error=${item.error} testid="knowledge-upload-error" />
  </li>`;
}

// ------------------------------------------------------------------------------ search

const STOP = new Set(['the', 'and', 'for', 'are', 'was', 'what', 'when', 'how', 'who', 'does', 'did', 'with', 'from', 'that', 'this', 'can']);

/** The query's words to mark: Latin words (3+ letters, or digits) and the bigrams of Chinese runs. */
export function queryTerms(query) {
  const terms = new Set();
  for (const run of (query || '').match(/[\p{Script=Han}]+|[\p{L}\p{N}]+/gu) || []) {
    if (/\p{Script=Han}/u.test(run)) {
      if (run.length <= 2) terms.add(run);
      for (let i = 0; i + 2 <= run.length; i++) terms.add(run.slice(i, i + 2));
    } else if ((run.length >= 3 || /^\d+$/.test(run)) && !STOP.has(run.toLowerCase())) terms.add(run);
  }
  return [...terms];
}

/** `text` with every occurrence of `terms` (any case) in <mark>. */
function Marked({ text, terms }) {
  const s = String(text || '');
  const hit = new Uint8Array(s.length);
  for (const term of terms) {
    const re = new RegExp(term.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'giu');
    for (const m of s.matchAll(re)) hit.fill(1, m.index, m.index + m[0].length);
  }
  const parts = [];
  let start = 0;
  for (let i = 1; i <= s.length; i++) {
    if (i === s.length || hit[i] !== hit[start]) {
      const piece = s.slice(start, i);
      parts.push(hit[start] ? html`<mark>${piece}</mark>` : piece);
      start = i;
    }
  }
  return html`<span class="passage">${parts}</span>`;
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function SearchTab({ kb }) {
  const [query, setQuery] = useState('');
  const [k, setK] = useState(5);
  const [mode, setMode] = useState('');
  const [image, setImage] = useState(null);
  const [state, setState] = useState({ busy: false, error: null, answer: null, terms: [] });
  const [open, setOpen] = useState(null);
  const submit = (e) => {
    e.preventDefault();
    return search(query.trim(), image, k);
  };
  useEffect(() => {
    // A walkthrough step of the Demos page hands over a search: read once, filled in and run.
    let p = null;
    try {
      p = JSON.parse(sessionStorage.getItem('qingliang.prefill') || 'null');
    } catch {
      p = null;
    }
    if (!p || p.page !== 'knowledge' || p.kb !== kb) return;
    sessionStorage.removeItem('qingliang.prefill');
    setQuery(p.query || '');
    setImage(p.image || null);
    if (p.limit) setK(p.limit);
    search((p.query || '').trim(), p.image || null, p.limit || k);
  }, []);
  const search = async (q, image, k) => {
    if (!q && !image) return setState({ ...state, error: new Error(t('knowledge.search.need')) });
    const body = { limit: Number(k) || 5 };
    if (q) body.query = q;
    if (image) body.image = image.url;
    if (mode) body.mode = mode;
    setState({ ...state, busy: true, error: null });
    try {
      const answer = await api.post(kbPath(kb, '/search'), body);
      const ocr = (answer.image_query && answer.image_query.ocr_text) || '';
      setState({ busy: false, error: null, answer, terms: queryTerms(`${q} ${ocr}`) });
    } catch (error) {
      setState({ busy: false, error, answer: null, terms: [] });
    }
  };
  const pickImage = async (e) => {
    const file = e.target.files[0];
    if (file) setImage({ name: file.name, url: await readDataUrl(file) });
  };
  const a = state.answer;
  return html`<div data-testid="knowledge-search">
    <form onSubmit=${submit}>
      <div class="toolbar">
        <label style=${{ flex: '1 1 18rem' }}>${t('knowledge.search.query')}<input type="search" data-testid="knowledge-search-query" value=${query}
          placeholder=${t('knowledge.search.placeholder')} onInput=${(e) => setQuery(e.target.value)} /></label>
        <${Field} label=${t('knowledge.search.k')}><input type="number" min="1" max="100" data-testid="knowledge-search-k" value=${k}
          onInput=${(e) => setK(e.target.value)} /></${Field}>
        <${Field} label=${t('knowledge.search.mode')}><select data-testid="knowledge-search-mode" value=${mode} onChange=${(e) => setMode(e.target.value)}>
          <option value="">${t('knowledge.search.mode_auto')}</option><option value="hybrid">${t('knowledge.search.mode_hybrid')}</option>
          <option value="dense">${t('knowledge.search.mode_dense')}</option></select></${Field}>
        <button type="submit" style=${{ width: 'auto' }} data-testid="knowledge-search-submit" aria-busy=${state.busy} disabled=${state.busy}>${t('knowledge.search.go')}</button>
      </div>
      <div class="toolbar">
        <${Field} label=${t('knowledge.search.image')}><input type="file" accept="image/*" data-testid="knowledge-search-image" onChange=${pickImage} /></${Field}>
        ${image && html`<img src=${image.url} alt=${image.name} class="query-image" style="max-height:4rem" />
          <button type="button" class="secondary outline" data-testid="knowledge-search-image-clear" onClick=${() => setImage(null)}>${t('knowledge.search.image_clear')}</button>`}
      </div>
    </form>
    <${ErrorBox} error=${state.error} testid="knowledge-search-error" />
    ${a && html`<p class="muted" data-testid="knowledge-search-meta">${t('knowledge.search.meta', { version: a.version, mode: a.mode, n: a.citations.length })}
      ${a.image_query && html`<br /><span data-testid="knowledge-search-image-query">${a.image_query.ocr_text
        ? t('knowledge.search.image_ocr', { text: a.image_query.ocr_text })
        : t('knowledge.search.image_query', { text: JSON.stringify(a.image_query) })}</span>`}</p>`}
    ${a && a.citations.length === 0 && html`<${Empty} text=${t('knowledge.search.empty')} />`}
    ${a && html`<div class="hits" data-testid="knowledge-hits">${a.citations.map((c, i) => html`<${Hit} key=${c.id || i} hit=${c} rank=${i + 1}
      terms=${state.terms} onOpen=${() => setOpen(c)} />`)}</div>`}
    ${open && html`<${HitDetail} hit=${open} terms=${state.terms} onClose=${() => setOpen(null)} />`}
  </div>`;
}

function Hit({ hit, rank, terms, onOpen }) {
  return html`<article data-testid="knowledge-hit" data-source=${hit.source} class="clickable" onClick=${onOpen}>
      <header class="toolbar"><strong data-testid="knowledge-hit-source">${rank}. ${hit.source}</strong>
        ${hit.title && html`<span class="muted">${hit.title}</span>`}
        <${Badge} text=${`${t('knowledge.hit.score')} ${fmtNum(hit.score, 4)}`} tone="info" testid="knowledge-hit-score" />
        <small class="muted">${[(hit.heading_path || []).join(' › '), hit.locator, t('knowledge.hit.chunk', { n: hit.chunk_index + 1 })].filter(Boolean).join(' · ')}</small></header>
      <p data-testid="knowledge-hit-text" class="hit-text"><${Marked} text=${hit.text} terms=${terms} /></p>
      <button type="button" class="secondary outline" style=${SMALL} data-testid="knowledge-hit-open"
        onClick=${(e) => { e.stopPropagation(); onOpen(); }}>${t('knowledge.hit.open')}</button>
    </article>`;
}

function HitDetail({ hit, terms, onClose }) {
  const rows = [
    ['document', hit.source], ['title', hit.title], ['doc_id', hit.doc_id], ['chunk', hit.chunk_index],
    ['heading', (hit.heading_path || []).join(' › ')], ['locator', hit.locator], ['page', hit.page],
    ['rows', hit.row_start != null ? `${hit.row_start}–${hit.row_end}` : null], ['image', hit.image_path],
    ['region', hit.region ? `(${hit.region.join(', ')})` : null], ['kind', hit.kind], ['version', hit.version != null ? `v${hit.version}` : null],
    ['written', hit.snapshot ? fmtTime(hit.snapshot) : null], ['provenance', hit.provenance ? JSON.stringify(hit.provenance) : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== '');
  const ctx = hit.context;
  const at = ctx ? ctx.indexOf(hit.text) : -1;
  return html`<dialog open data-testid="knowledge-hit-detail"><article>
    <header><strong>${t('knowledge.hit.detail')}: ${hit.source}</strong></header>
    <dl class="cite" style=${GRID} data-testid="knowledge-hit-cite">${rows.map(([k, v]) => html`<dt class="muted">${t(`knowledge.cite.${k}`)}</dt><dd style=${{ margin: 0 }} data-field=${k}>${v}</dd>`)}</dl>
    <h4>${t('knowledge.hit.passage')}</h4>
    <p class="passage-full" data-testid="knowledge-hit-passage"><${Marked} text=${hit.text} terms=${terms} /></p>
    ${ctx && html`<h4>${t('knowledge.hit.context')}</h4><p class="passage-full muted" data-testid="knowledge-hit-context">${at < 0
      ? html`<${Marked} text=${ctx} terms=${terms} />`
      : html`<${Marked} text=${ctx.slice(0, at)} terms=${terms} /><strong class="in-context"><${Marked} text=${hit.text} terms=${terms} /></strong><${Marked} text=${ctx.slice(at + hit.text.length)} terms=${terms} />`}</p>`}
    <footer><button type="button" data-testid="knowledge-hit-close" onClick=${onClose}>${t('common.close')}</button></footer>
  </article></dialog>`;
}

// ---------------------------------------------------------------------------- versions

function VersionsTab({ kb, stats, onChanged }) {
  const snaps = useAsync(() => api.get(kbPath(kb, '/snapshots')), [kb]);
  const [note, setNote] = useState('');
  const [target, setTarget] = useState(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [outcome, setOutcome] = useState(null);
  const act = async (fn) => {
    setBusy(true);
    setError(null);
    setOutcome(null);
    try {
      setOutcome(await fn());
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      snaps.reload();
      onChanged();
    }
  };
  const take = () => act(async () => {
    const r = await api.post(kbPath(kb, '/snapshots'), { note: note.trim() });
    setNote('');
    return { text: t('knowledge.ver.taken', r), raw: r };
  });
  const rollback = (version) => act(async () => {
    const r = await api.post(kbPath(kb, '/rollback'), { version });
    return { text: t('knowledge.ver.rolled', r), raw: r };
  });
  const last = stats.last_sync;
  const rows = ((snaps.data && snaps.data.data) || []).slice().sort((x, y) => y.version - x.version);
  return html`<div data-testid="knowledge-versions">
    <p><strong data-testid="knowledge-version">${t('knowledge.ver.current', { version: stats.version })}</strong>
      ${last && html`<br /><small class="muted">${t('knowledge.ver.last', { ...last, time: fmtTime(last.at) })}</small>`}
      <br /><small class="muted">${t('knowledge.ver.history')}</small></p>
    ${writer() && html`<div class="toolbar">
      <${Field} label=${t('knowledge.ver.note')}><input type="text" maxlength="500" data-testid="knowledge-snapshot-note" value=${note}
        onInput=${(e) => setNote(e.target.value)} /></${Field}>
      <button type="button" data-testid="knowledge-snapshot-take" aria-busy=${busy} disabled=${busy} onClick=${take}>${t('knowledge.ver.take')}</button></div>`}
    <${ErrorBox} error=${error} testid="knowledge-version-error" />
    ${outcome && html`<div class="notice" role="status" data-testid="knowledge-version-result">${outcome.text}
      <${Json} value=${outcome.raw} label=${t('common.details')} /></div>`}
    <${History} kb=${kb} version=${stats.version} />
    <h3>${t('knowledge.ver.snapshots')}</h3>
    <${ErrorBox} error=${snaps.error} testid="knowledge-snapshots-error" />
    ${snaps.loading && !snaps.data ? html`<${Loading} />` : rows.length === 0 ? html`<${Empty} text=${t('knowledge.ver.none')} />`
      : html`<div class="table-wrap"><table class="striped" data-testid="knowledge-snapshots"><thead><tr>
          ${['version', 'time', 'points', 'note'].map((c) => html`<th scope="col">${t(`knowledge.ver.col.${c}`)}</th>`)}<th></th></tr></thead>
        <tbody>${rows.map((s) => html`<tr data-testid="knowledge-snapshot" data-version=${s.version}>
          <td>v${s.version}${s.version === stats.version ? html` <${Badge} text=${t('knowledge.ver.is_current')} tone="ok" />` : ''}</td>
          <td>${fmtTime(s.created_at)}</td><td>${fmtNum(s.points)}</td>
          <td>${s.note === 'auto' ? t('knowledge.ver.auto') : s.note || '—'}</td>
          <td>${writer() && html`<button type="button" class="secondary outline" style=${SMALL} data-testid="knowledge-rollback" disabled=${busy}
            onClick=${() => setTarget(s.version)}>${t('knowledge.ver.rollback')}</button>`}</td></tr>`)}</tbody></table></div>`}
    <${Confirm} open=${target !== null} title=${t('knowledge.ver.rollback_title')} danger confirmLabel=${t('knowledge.ver.rollback')}
      onClose=${(ok) => { const v = target; setTarget(null); if (ok) rollback(v); }}>
      <p>${target !== null && t('knowledge.ver.rollback_text', { kb, version: target })}</p></${Confirm}>
  </div>`;
}

/** The base's changes, newest first: what, who, when, the version it made, its figures. */
function History({ kb, version }) {
  const history = useAsync(() => api.get(kbPath(kb, '/history?limit=100')), [kb, version]);
  const rows = (history.data && history.data.data) || [];
  const figures = (d) => {
    const parts = ['added', 'updated', 'deleted', 'errors', 'points', 'note', 'to', 'reason']
      .filter((k) => d[k] !== undefined && d[k] !== null && d[k] !== '' && d[k] !== 0)
      .map((k) => `${t(`knowledge.hist.${k}`)} ${d[k]}`);
    return parts.join(' · ') || '—';
  };
  return html`<h3>${t('knowledge.hist.title')}</h3>
    <${ErrorBox} error=${history.error} testid="knowledge-history-error" />
    ${history.loading && !history.data ? html`<${Loading} />` : rows.length === 0 ? html`<${Empty} />`
      : html`<div class="table-wrap"><table class="striped" data-testid="knowledge-history"><thead><tr>
          ${['time', 'action', 'version', 'actor', 'figures'].map((c) => html`<th scope="col">${t(`knowledge.hist.col.${c}`)}</th>`)}</tr></thead>
        <tbody>${rows.map((e) => html`<tr key=${e.seq} data-testid="knowledge-history-row" data-action=${e.action}>
          <td>${fmtTime(e.at)}</td><td>${e.action}</td><td>${e.version ? `v${e.version}` : '—'}</td><td>${e.actor}</td>
          <td>${figures(e.detail || {})}
            ${(e.detail && e.detail.failed || []).map((f) => html`<br /><small class="error">${f.path}: ${f.reason}</small>`)}</td></tr>`)}
        </tbody></table></div>`}`;
}

// ----------------------------------------------------------------------------- answers

function AnswersTab({ kb, onChanged }) {
  const [status, setStatus] = useState('active');
  const list = useAsync(() => api.get(kbPath(kb, `/answers?status=${status}`)), [kb, status]);
  const [form, setForm] = useState({ question: '', answer: '' });
  const [retracting, setRetracting] = useState(null);
  const [reason, setReason] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [outcome, setOutcome] = useState(null);
  const act = async (fn) => {
    setBusy(true);
    setError(null);
    setOutcome(null);
    try {
      setOutcome(await fn());
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      list.reload();
      onChanged();
    }
  };
  const add = (e) => {
    e.preventDefault();
    act(async () => {
      const r = await api.post(kbPath(kb, '/answers'), { ...form, provenance: { source: 'review' } });
      setForm({ question: '', answer: '' });
      return t('knowledge.ans.added', r);
    });
  };
  const retract = (a, why) => act(async () => {
    await api.post(kbPath(kb, `/answers/${seg(a.id)}/retract`), { reason: why });
    return null;
  });
  const rows = (list.data && list.data.data) || [];
  return html`<div data-testid="knowledge-answers">
    <div class="toolbar"><${Field} label=${t('knowledge.ans.show')}><select data-testid="knowledge-answers-status" value=${status}
      onChange=${(e) => setStatus(e.target.value)}>${['active', 'retracted', 'all'].map((s) => html`<option value=${s}>${t(`knowledge.ans.${s}`)}</option>`)}</select></${Field}></div>
    <${ErrorBox} error=${list.error} testid="knowledge-answers-error" />
    <${ErrorBox} error=${error} testid="knowledge-answer-error" />
    ${outcome && html`<p class="notice" role="status" data-testid="knowledge-answer-result">${outcome}</p>`}
    ${list.loading && !list.data ? html`<${Loading} />` : rows.length === 0 ? html`<${Empty} text=${t('knowledge.ans.none')} />`
      : html`<div class="table-wrap"><table class="striped" data-testid="knowledge-answers-table"><thead><tr>
          ${['question', 'answer', 'source', 'by', 'status', 'version', 'time'].map((c) => html`<th scope="col">${t(`knowledge.ans.${c}`)}</th>`)}<th></th></tr></thead>
        <tbody>${rows.map((a) => html`<tr data-testid="knowledge-answer" data-id=${a.id}>
          <td>${a.question}</td><td>${a.answer}</td><td>${(a.provenance || {}).source || '—'}</td><td>${(a.provenance || {}).by || '—'}</td>
          <td><${Badge} text=${t(`knowledge.ans.${a.status}`)} tone=${a.status === 'active' ? 'ok' : 'muted'} />
            ${a.status === 'retracted' && html`<br /><small class="muted">${t('knowledge.ans.retracted_by', { by: a.retracted_by, time: fmtTime(a.retracted_at), reason: a.reason })}</small>`}</td>
          <td>v${a.version}</td><td>${fmtTime(a.created_at)}</td>
          <td>${writer() && a.status === 'active' && html`<button type="button" class="secondary outline" style=${SMALL} data-testid="knowledge-answer-retract"
            disabled=${busy} onClick=${() => { setReason(''); setRetracting(a); }}>${t('knowledge.ans.retract')}</button>`}</td></tr>`)}</tbody></table></div>`}
    ${writer() && html`<form onSubmit=${add} data-testid="knowledge-answer-form"><h3>${t('knowledge.ans.add')}</h3>
      <div class="grid-even">
        <${Field} label=${t('knowledge.ans.question')}><textarea rows="2" data-testid="knowledge-answer-question" value=${form.question}
          onInput=${(e) => setForm({ ...form, question: e.target.value })}></textarea></${Field}>
        <${Field} label=${t('knowledge.ans.answer')}><textarea rows="2" data-testid="knowledge-answer-answer" value=${form.answer}
          onInput=${(e) => setForm({ ...form, answer: e.target.value })}></textarea></${Field}>
      </div>
      <button type="submit" style=${{ width: 'auto' }} data-testid="knowledge-answer-add" aria-busy=${busy} disabled=${busy}>${t('knowledge.ans.add')}</button></form>`}
    <${Confirm} open=${!!retracting} title=${t('knowledge.ans.retract_title')} danger confirmLabel=${t('knowledge.ans.retract')}
      onClose=${(ok) => { const a = retracting; setRetracting(null); if (ok) retract(a, reason); }}>
      <p>${retracting && retracting.question}</p>
      <${Field} label=${t('knowledge.ans.reason')}><input type="text" data-testid="knowledge-answer-reason" value=${reason}
        onInput=${(e) => setReason(e.target.value)} /></${Field}></${Confirm}>
  </div>`;
}
