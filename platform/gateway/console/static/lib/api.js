// The public HTTP API with the user's key: the only thing the console talks to.
// Every error is an ApiError carrying the server's message (OpenAI's error format).

const KEY = 'qingliang.key';
const unauthorized = new Set();

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
  /** GET /v1/whoami of the current key: {name, scopes, tenant, ray_dashboard}. */
  whoami: null,
};

/** Called when the server says the key is no longer valid (401). */
export function onUnauthorized(fn) {
  unauthorized.add(fn);
  return () => unauthorized.delete(fn);
}

/** May the current key call routes that need any of `scopes`? (admin may call all.) */
export function can(...scopes) {
  const have = (session.whoami && session.whoami.scopes) || [];
  return have.includes('admin') || scopes.some((s) => have.includes(s));
}

function headers(extra = {}, key = session.key) {
  const h = { Accept: 'application/json', ...extra };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function errorOf(status, data, fallback) {
  const err = data && typeof data === 'object' ? data.error || data.detail : null;
  if (err && typeof err === 'object') {
    return new ApiError(status, err.message || fallback, err.code || null, err.param || null);
  }
  if (typeof err === 'string') return new ApiError(status, err);
  if (typeof data === 'string' && data.trim()) return new ApiError(status, data.trim());
  return new ApiError(status, fallback);
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function request(method, path, body, opts = {}) {
  const extra = {};
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    extra['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(extra, opts.key ?? session.key),
      body: payload,
      signal: opts.signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `${method} ${path}: ${e.message}`);
  }
  const data = await parse(response);
  if (!response.ok) {
    if (response.status === 401 && !opts.key) unauthorized.forEach((fn) => fn());
    throw errorOf(response.status, data, `${method} ${path}: HTTP ${response.status}`);
  }
  return opts.withResponse ? { data, response } : data;
}

/** Read a text/event-stream answer: `onEvent(obj)` for each `data:` line, until [DONE]. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        continue;
      }
      if (event && event.error && !event.type && !event.choices) {
        throw errorOf(200, event, 'the stream ended with an error');
      }
      onEvent(event);
    }
  }
}

export const api = {
  get: (path, opts) => request('GET', path, undefined, opts),
  post: (path, body, opts) => request('POST', path, body === undefined ? {} : body, opts),
  del: (path, opts) => request('DELETE', path, undefined, opts),

  /** POST a JSON body and read the answer as server-sent events. Returns the Response. */
  async stream(path, body, onEvent, { signal } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method: 'POST',
        headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
        body: JSON.stringify(body),
        signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, `POST ${path}: ${e.message}`);
    }
    if (!response.ok) {
      const data = await parse(response);
      if (response.status === 401) unauthorized.forEach((fn) => fn());
      throw errorOf(response.status, data, `POST ${path}: HTTP ${response.status}`);
    }
    await readEvents(response, onEvent);
    return response;
  },

  /** Upload a file as multipart/form-data, reporting progress (0..1). */
  upload(path, fields, onProgress) {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', path);
      for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
      xhr.onerror = () => reject(new ApiError(0, `POST ${path}: the upload failed`));
      xhr.onload = () => {
        let data = xhr.responseText;
        try {
          data = JSON.parse(xhr.responseText);
        } catch {
          /* keep the text */
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else {
          if (xhr.status === 401) unauthorized.forEach((fn) => fn());
          reject(errorOf(xhr.status, data, `POST ${path}: HTTP ${xhr.status}`));
        }
      };
      xhr.send(form);
    });
  },
};

/** A path segment, escaped (names may hold ':' or non-ASCII text). */
export const seg = (value) => encodeURIComponent(value);
