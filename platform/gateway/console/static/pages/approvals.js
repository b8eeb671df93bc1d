// Placeholder until the page is written.
import { html } from '../lib/ui.js';
import { t } from '../lib/i18n.js';

export const strings = { zh: { 'approvals.todo': '此页面正在建设中。' }, en: { 'approvals.todo': 'This page is being built.' } };

export default function Page() {
  return html`<h2>${t('nav.approvals')}</h2><p class="muted">${t('approvals.todo')}</p>`;
}
