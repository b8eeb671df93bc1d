// Placeholder until the page is written.
import { html } from '../lib/ui.js';
import { t } from '../lib/i18n.js';

export const strings = { zh: { 'knowledge.todo': '此页面正在建设中。' }, en: { 'knowledge.todo': 'This page is being built.' } };

export default function Page() {
  return html`<h2>${t('nav.knowledge')}</h2><p class="muted">${t('knowledge.todo')}</p>`;
}
