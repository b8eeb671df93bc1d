// Placeholder until the page is written.
import { html } from '../lib/ui.js';
import { t } from '../lib/i18n.js';

export const strings = { zh: { 'metrics.todo': '此页面正在建设中。' }, en: { 'metrics.todo': 'This page is being built.' } };

export default function Page() {
  return html`<h2>${t('nav.metrics')}</h2><p class="muted">${t('metrics.todo')}</p>`;
}
