// Placeholder until the page is written.
import { html } from '../lib/ui.js';
import { t } from '../lib/i18n.js';

export const strings = { zh: { 'router.todo': '此页面正在建设中。' }, en: { 'router.todo': 'This page is being built.' } };

export default function Page() {
  return html`<h2>${t('nav.router')}</h2><p class="muted">${t('router.todo')}</p>`;
}
