// Strings in Chinese (the default) and English. Each page module exports its own
// `strings = {zh: {...}, en: {...}}`; the shell registers them when the page loads.
import { useEffect, useState } from 'preact/hooks';

const STORE = 'qingliang.lang';
const dicts = { zh: {}, en: {} };
const listeners = new Set();
let lang = localStorage.getItem(STORE) === 'en' ? 'en' : 'zh';

export function addStrings(strings) {
  for (const l of ['zh', 'en']) Object.assign(dicts[l], (strings && strings[l]) || {});
}

/** The text of `key` in the current language ({name} placeholders filled from `vars`). */
export function t(key, vars) {
  let s = dicts[lang][key] ?? dicts.zh[key] ?? key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? '') + '');
  return s;
}

export const getLang = () => lang;

export function setLang(next) {
  lang = next === 'en' ? 'en' : 'zh';
  localStorage.setItem(STORE, lang);
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  listeners.forEach((fn) => fn(lang));
}

/** Re-render the calling component when the language changes. */
export function useLang() {
  const [l, set] = useState(lang);
  useEffect(() => {
    listeners.add(set);
    return () => listeners.delete(set);
  }, []);
  return l;
}

const locale = () => (lang === 'zh' ? 'zh-CN' : 'en-GB');

/** A time given in seconds since the epoch (or an ISO string), in the user's time zone. */
export function fmtTime(value) {
  if (value === null || value === undefined || value === '') return '—';
  const d = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(locale(), { hour12: false });
}

export function fmtNum(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (typeof value !== 'number') return String(value);
  if (Number.isInteger(value)) return value.toLocaleString(locale());
  return value.toLocaleString(locale(), { maximumFractionDigits: digits });
}

export function fmtMs(value) {
  if (value === null || value === undefined) return '—';
  return value >= 1000 ? `${fmtNum(value / 1000, 2)} s` : `${fmtNum(value, 0)} ms`;
}

document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
