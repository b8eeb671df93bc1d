// Shared pieces of every page: `html` (htm over Preact), hooks for loading and polling,
// and small components (errors, tables, badges, tabs, charts) styled by Pico CSS.
import { h } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import uPlot from 'uplot';
import { t } from './i18n.js';

export const html = htm.bind(h);

/** Run `load()` now and when `deps` change: {data, error, loading, reload}. */
export function useAsync(load, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const seq = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (mine === seq.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => {
    reload();
  }, [reload]);
  return { ...state, reload };
}

/** useAsync, then again every `ms` while the page is visible (0: never). */
export function usePoll(load, ms, deps = []) {
  const state = useAsync(load, deps);
  useEffect(() => {
    if (!ms) return undefined;
    const id = setInterval(() => {
      if (document.visibilityState === 'visible') state.reload();
    }, ms);
    return () => clearInterval(id);
  }, [state.reload, ms]);
  return state;
}

export function ErrorBox({ error, testid = 'error' }) {
  if (!error) return null;
  const status = error.status ? `${error.status} ` : '';
  return html`<p class="error" role="alert" data-testid=${testid}>${status}${error.message || String(error)}</p>`;
}

export function Loading({ when = true }) {
  return when ? html`<p aria-busy="true" class="muted">${t('common.loading')}</p>` : null;
}

export function Empty({ text }) {
  return html`<p class="muted empty">${text || t('common.empty')}</p>`;
}

/** A badge coloured by tone: ok | warn | bad | info | muted. */
export function Badge({ text, tone = 'muted', testid }) {
  return html`<span class=${`badge ${tone}`} data-testid=${testid}>${text}</span>`;
}

const TONES = {
  ok: ['RUNNING', 'HEALTHY', 'succeeded', 'completed', 'approved', 'up', 'ready', 'done', 'ok'],
  warn: ['waiting', 'waiting_approval', 'pending', 'UPDATING', 'DEPLOYING', 'STARTING', 'running', 'queued'],
  bad: ['failed', 'FAILED', 'UNHEALTHY', 'rejected', 'cancelled', 'DEPLOY_FAILED', 'error'],
};

/** The tone a status word deserves. */
export function toneOf(status) {
  for (const [tone, words] of Object.entries(TONES)) if (words.includes(status)) return tone;
  return 'muted';
}

export function StatusBadge({ status, testid }) {
  return html`<${Badge} text=${status || '—'} tone=${toneOf(status)} testid=${testid} />`;
}

/** columns: [{key, label, render?(row), class?}]; rows: objects; onRow(row) makes rows clickable. */
export function Table({ columns, rows, empty, testid, onRow, rowKey = (r, i) => i, selected }) {
  if (!rows || rows.length === 0) return html`<${Empty} text=${empty} />`;
  return html`<div class="table-wrap"><table class="striped" data-testid=${testid}>
    <thead><tr>${columns.map((c) => html`<th scope="col" class=${c.class}>${c.label}</th>`)}</tr></thead>
    <tbody>${rows.map(
      (row, i) => html`<tr key=${rowKey(row, i)} class=${[onRow ? 'clickable' : '', selected === rowKey(row, i) ? 'selected' : ''].join(' ')}
          onClick=${onRow ? () => onRow(row) : undefined}>
        ${columns.map((c) => html`<td class=${c.class}>${c.render ? c.render(row) : fmtCell(row[c.key])}</td>`)}
      </tr>`,
    )}</tbody></table></div>`;
}

function fmtCell(value) {
  if (value === null || value === undefined || value === '') return '—';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

export function Json({ value, open = false, label }) {
  const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  if (label) return html`<details open=${open}><summary>${label}</summary><pre class="json">${text}</pre></details>`;
  return html`<pre class="json">${text}</pre>`;
}

export function Tabs({ tabs, active, onChange, testid = 'tabs' }) {
  return html`<nav class="tabs" role="tablist" data-testid=${testid}>${tabs.map(
    (tab) => html`<button type="button" role="tab" aria-selected=${tab.id === active}
        class=${tab.id === active ? '' : 'secondary outline'} data-testid=${`tab-${tab.id}`}
        onClick=${() => onChange(tab.id)}>${tab.label}</button>`,
  )}</nav>`;
}

/** Field with a label and (optionally) the error of that field under it. */
export function Field({ label, error, children, hint }) {
  return html`<label>${label}${children}
    ${hint && html`<small class="muted">${hint}</small>`}
    ${error && html`<small class="field-error" role="alert">${error}</small>`}</label>`;
}

/**
 * A time-series chart (uPlot). x: seconds since the epoch; series: [{label, values, stroke?}].
 * It follows the width of its container.
 */
export function Chart({ title, x, series, height = 220, testid, yLabel }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    if (!box.current) return undefined;
    const width = Math.max(260, box.current.clientWidth || 600);
    const palette = ['#1f6feb', '#d9480f', '#2b8a3e', '#ae3ec9', '#e67700', '#0b7285'];
    const opts = {
      width,
      height,
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel || '' }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label,
        stroke: s.stroke || palette[i % palette.length],
        width: 2,
        spanGaps: true,
        // Sparse series (a few requests) would draw nothing without their points.
        points: { show: true, size: 5 },
      }))],
      legend: { live: true },
    };
    plot.current = new uPlot(opts, [x, ...series.map((s) => s.values)], box.current);
    const resize = () => box.current && plot.current.setSize({ width: Math.max(260, box.current.clientWidth), height });
    window.addEventListener('resize', resize);
    return () => {
      window.removeEventListener('resize', resize);
      plot.current.destroy();
    };
  }, [JSON.stringify([x, series.map((s) => [s.label, s.values])]), height]);
  return html`<figure class="chart" data-testid=${testid}>
    ${title && html`<figcaption>${title}</figcaption>`}
    ${x.length === 0 ? html`<${Empty} text=${t('common.nodata')} />` : html`<div ref=${box}></div>`}
  </figure>`;
}

/** A dialog asking for confirmation; resolves the clicked button's value. */
export function Confirm({ open, title, children, onClose, confirmLabel, danger }) {
  if (!open) return null;
  return html`<dialog open data-testid="confirm"><article>
    <header><strong>${title}</strong></header>
    ${children}
    <footer>
      <button type="button" class="secondary" data-testid="confirm-cancel" onClick=${() => onClose(false)}>${t('common.cancel')}</button>
      <button type="button" class=${danger ? 'danger' : ''} data-testid="confirm-ok" onClick=${() => onClose(true)}>${confirmLabel || t('common.ok')}</button>
    </footer></article></dialog>`;
}

/** Shorten long text for a table cell, keeping the whole in the title attribute. */
export function Clip({ text, n = 80 }) {
  if (text === null || text === undefined) return '—';
  const s = String(text);
  return s.length <= n ? s : html`<span title=${s}>${s.slice(0, n)}…</span>`;
}
